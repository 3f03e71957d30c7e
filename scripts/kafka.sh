#!/usr/bin/env bash
# Single-node Apache Kafka (KRaft) for development and tests, built from Maven Central jars.
#
#   scripts/kafka.sh fetch    resolve the broker jars into the cache (once per version)
#   scripts/kafka.sh start    format storage and start a broker+controller on 127.0.0.1
#   scripts/kafka.sh stop     stop the broker started for this port / data dir
#   scripts/kafka.sh status   exit 0 and print the bootstrap address while it runs
#
# Environment:
#   FACESTREAM_CACHE       cache root (default ~/.cache/facestream)
#   KAFKA_VERSION          org.apache.kafka:kafka_2.13 version (default 4.4.0)
#   KAFKA_PORT             client port (default 9092)
#   KAFKA_CONTROLLER_PORT  KRaft controller port (default KAFKA_PORT + 1)
#   KAFKA_DATA_DIR         broker state: data, logs, pid file. Default: a dir under the cache
#                          that is wiped on every start; an explicit dir is kept across restarts.
#   KAFKA_START_TIMEOUT    seconds to wait for the broker to answer metadata (default 60)
#   KAFKA_HEAP_OPTS        JVM heap flags (default -Xms256m -Xmx512m)
#   KAFKA_JVM_OPTS         JVM collector and compiler flags
#                          (default -XX:+UseSerialGC -XX:TieredStopAtLevel=1)
#   KAFKA_OWNER_PID        optional: stop the broker when this process exits (crashed callers)
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
CACHE="${FACESTREAM_CACHE:-$HOME/.cache/facestream}"
KAFKA_VERSION="${KAFKA_VERSION:-4.4.0}"
KAFKA_HOME="$CACHE/kafka/$KAFKA_VERSION"
LIBS="$KAFKA_HOME/libs"
KAFKA_PORT="${KAFKA_PORT:-9092}"
KAFKA_CONTROLLER_PORT="${KAFKA_CONTROLLER_PORT:-$((KAFKA_PORT + 1))}"
if [[ -n "${KAFKA_DATA_DIR:-}" ]]; then
  DATA_DIR="$(realpath -m "$KAFKA_DATA_DIR")"
  DEFAULT_DATA_DIR=0
else
  DATA_DIR="$CACHE/kafka/run-$KAFKA_PORT"
  DEFAULT_DATA_DIR=1
fi
PID_FILE="$DATA_DIR/broker.pid"
LOG_DIR="$DATA_DIR/logs"
BOOTSTRAP="127.0.0.1:$KAFKA_PORT"
JAVA="${JAVA:-java}"

die() { echo "kafka.sh: $*" >&2; exit 1; }

log_tail() {
  local f="$LOG_DIR/server.log"
  if [[ -s "$LOG_DIR/kafka.out" ]]; then
    echo "---- $LOG_DIR/kafka.out ----" >&2
    tail -n 40 "$LOG_DIR/kafka.out" >&2
  fi
  if [[ -s "$f" ]]; then
    # The tail alone is often the config dump; the errors say more.
    echo "---- errors and warnings in $f ----" >&2
    grep -E '^\[[^]]*\] (ERROR|FATAL|WARN) ' "$f" | tail -n 20 >&2 || true
    echo "---- last lines of $f ----" >&2
    tail -n 20 "$f" >&2
  fi
}

alive() {
  # kill -0 alone is fooled by zombies, which linger where nothing reaps orphans.
  local state
  state="$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null)" || return 1
  [[ -n "$state" && "$state" != Z && "$state" != X ]]
}

broker_pid() {
  # Prints the pid of a live broker for this data dir, or fails. The command-line check
  # guards against a stale pid file whose pid was reused.
  [[ -f "$PID_FILE" ]] || return 1
  local pid
  pid="$(cat "$PID_FILE")"
  [[ "$pid" =~ ^[0-9]+$ ]] && alive "$pid" || return 1
  local cmdline
  cmdline="$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null)" || return 1
  [[ "$cmdline" == *"kafka.Kafka $DATA_DIR/server.properties"* ]] || return 1
  echo "$pid"
}

# A Metadata v4 request over bash's /dev/tcp: the broker is ready once it answers with
# at least one registered broker. Avoids a second JVM (seconds on 2 cores) per poll.
metadata_ready() {
  # shellcheck disable=SC2016  # expanded by the inner bash, with the port as $1
  timeout 5 bash -c '
    exec 3<>"/dev/tcp/127.0.0.1/$1" || exit 1
    # size=17 | api_key=3 (Metadata) | version=4 | correlation_id=1 | client_id="fs"
    # | topics=null (-1) | allow_auto_topic_creation=false
    printf "\x00\x00\x00\x11\x00\x03\x00\x04\x00\x00\x00\x01\x00\x02fs\xff\xff\xff\xff\x00" >&3
    # Response: size(4) correlation_id(4) throttle_time_ms(4) brokers count(4) ...
    bytes=$(head -c 16 <&3 | od -An -tu1 -v | tr -s " \n" " ")
    read -r -a b <<<"$bytes"
    [[ ${#b[@]} -eq 16 && ${b[7]} -eq 1 ]] || exit 1
    count=$(( (b[12] << 24) | (b[13] << 16) | (b[14] << 8) | b[15] ))
    (( count >= 1 ))
  ' _ "$KAFKA_PORT" 2>/dev/null
}

port_in_use() {
  # shellcheck disable=SC2016  # expanded by the inner bash
  timeout 2 bash -c 'exec 3<>"/dev/tcp/127.0.0.1/$1"' _ "$1" 2>/dev/null
}

random_cluster_id() {
  # Kafka's Uuid string form: 16 random bytes, URL-safe base64 without padding; Kafka
  # itself never hands out ids starting with '-', so neither do we.
  local id
  while :; do
    id="$(head -c 16 /dev/urandom | base64 | tr '+/' '-_' | tr -d '=\n')"
    [[ "$id" == -* ]] || { echo "$id"; return; }
  done
}

cmd_fetch() {
  if [[ -f "$LIBS/.complete" ]]; then
    echo "kafka $KAFKA_VERSION already in $LIBS"
    return
  fi
  command -v mvn >/dev/null || die "mvn not found: Maven is needed to fetch the Kafka jars"
  mkdir -p "$KAFKA_HOME"
  local tmp="$KAFKA_HOME/libs.tmp.$$"
  rm -rf "$tmp"
  mkdir -p "$tmp"
  echo "fetching org.apache.kafka:kafka_2.13:$KAFKA_VERSION into $LIBS ..."
  # Maven reports errors on stdout, so keep its output and show it only on failure.
  if ! mvn -B -q -f "$SCRIPT_DIR/kafka/pom.xml" \
      org.apache.maven.plugins:maven-dependency-plugin:3.8.1:copy-dependencies \
      -Dkafka.version="$KAFKA_VERSION" -DincludeScope=runtime -DoutputDirectory="$tmp" \
      >"$tmp.log" 2>&1; then
    cat "$tmp.log" >&2
    rm -rf "$tmp" "$tmp.log"
    die "Maven could not resolve Kafka $KAFKA_VERSION"
  fi
  rm -f "$tmp.log"
  ls "$tmp"/kafka_2.13-"$KAFKA_VERSION".jar >/dev/null || die "kafka_2.13 jar missing after fetch"
  touch "$tmp/.complete"
  if [[ -f "$LIBS/.complete" ]]; then
    rm -rf "$tmp"  # a concurrent fetch finished first; keep its (identical) jars in place
  else
    rm -rf "$LIBS"
    mv "$tmp" "$LIBS"
  fi
  echo "kafka $KAFKA_VERSION: $(find "$LIBS" -name '*.jar' | wc -l) jars in $LIBS"
}

write_properties() {
  cat >"$DATA_DIR/server.properties" <<EOF
# Written by scripts/kafka.sh: one node that is both broker and KRaft controller.
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:$KAFKA_CONTROLLER_PORT
listeners=PLAINTEXT://127.0.0.1:$KAFKA_PORT,CONTROLLER://127.0.0.1:$KAFKA_CONTROLLER_PORT
advertised.listeners=PLAINTEXT://127.0.0.1:$KAFKA_PORT
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
inter.broker.listener.name=PLAINTEXT
controller.listener.names=CONTROLLER
log.dirs=$DATA_DIR/data
num.partitions=4
auto.create.topics.enable=true
offsets.topic.replication.factor=1
offsets.topic.num.partitions=4
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
# Single node: no point in waiting for more consumers before the first rebalance.
group.initial.rebalance.delay.ms=0
num.network.threads=2
num.io.threads=4
num.recovery.threads.per.data.dir=1
log.retention.hours=24
EOF
}

java_cmd() {
  # Sets JAVA_CMD: the JVM command line shared by the storage tool and the broker.
  # shellcheck disable=SC2206  # KAFKA_HEAP_OPTS is a list of flags
  # KAFKA_JVM_OPTS: the collector and compiler. The default suits one small local broker
  # on a machine whose cores go to faces: the serial collector (no concurrent GC threads)
  # and the client compiler only. Measured here against G1 with C2: 38% less CPU to start,
  # 45% less for 80 topics and 2,000 20 kB frames, 26% less idle.
  # shellcheck disable=SC2206  # KAFKA_JVM_OPTS too
  JAVA_CMD=("$JAVA" ${KAFKA_HEAP_OPTS:--Xms256m -Xmx512m}
    ${KAFKA_JVM_OPTS:--XX:+UseSerialGC -XX:TieredStopAtLevel=1}
    -Djava.awt.headless=true
    -Dkafka.logs.dir="$LOG_DIR"
    -Dlog4j2.configurationFile="$SCRIPT_DIR/kafka/log4j2.xml"
    -cp "$LIBS/*")
}

cmd_start() {
  command -v "$JAVA" >/dev/null || die "java not found (Kafka $KAFKA_VERSION needs Java 17+)"
  [[ -f "$LIBS/.complete" ]] || cmd_fetch
  local pid
  if pid="$(broker_pid)"; then
    die "a broker is already running for $DATA_DIR (pid $pid, $BOOTSTRAP)"
  fi
  local port
  for port in "$KAFKA_PORT" "$KAFKA_CONTROLLER_PORT"; do
    if port_in_use "$port"; then die "port $port on 127.0.0.1 is already in use"; fi
  done
  if [[ "$DEFAULT_DATA_DIR" == 1 ]]; then
    rm -rf "$DATA_DIR"
  fi
  mkdir -p "$DATA_DIR/data" "$LOG_DIR"
  rm -f "$PID_FILE"
  write_properties
  java_cmd

  if [[ ! -f "$DATA_DIR/data/meta.properties" ]]; then
    if ! "${JAVA_CMD[@]}" kafka.tools.StorageTool format --ignore-formatted \
        -t "$(random_cluster_id)" -c "$DATA_DIR/server.properties" \
        >"$LOG_DIR/format.out" 2>&1; then
      cat "$LOG_DIR/format.out" >&2
      die "formatting storage in $DATA_DIR/data failed"
    fi
  fi

  # Started directly (not via a function) so that $! is the JVM's own pid.
  "${JAVA_CMD[@]}" kafka.Kafka "$DATA_DIR/server.properties" >"$LOG_DIR/kafka.out" 2>&1 </dev/null &
  pid=$!
  echo "$pid" >"$PID_FILE"

  if [[ -n "${KAFKA_OWNER_PID:-}" ]]; then
    # Watchdog: a caller killed without cleanup (e.g. a pytest timeout) must not leave
    # a JVM behind. It exits by itself once the broker is gone.
    (
      while alive "$KAFKA_OWNER_PID" && alive "$pid"; do
        sleep 1
      done
      kill "$pid" 2>/dev/null || true
    ) </dev/null >/dev/null 2>&1 &
    disown
  fi

  local deadline=$((SECONDS + ${KAFKA_START_TIMEOUT:-60}))
  until metadata_ready; do
    if ! alive "$pid"; then
      log_tail
      rm -f "$PID_FILE"
      die "broker exited during start-up (logs in $LOG_DIR)"
    fi
    if ((SECONDS >= deadline)); then
      log_tail
      cmd_stop >/dev/null 2>&1 || true
      die "broker did not answer metadata on $BOOTSTRAP within ${KAFKA_START_TIMEOUT:-60}s"
    fi
    sleep 0.5
  done
  echo "$BOOTSTRAP"
}

cmd_stop() {
  local pid
  if ! pid="$(broker_pid)"; then
    rm -f "$PID_FILE"
    echo "kafka: not running ($DATA_DIR)"
    return 0
  fi
  kill "$pid"
  # A controlled shutdown normally takes a few seconds; escalate after 30.
  local i
  for ((i = 0; i < 300; i++)); do
    alive "$pid" || break
    sleep 0.1
  done
  if alive "$pid"; then
    echo "kafka.sh: broker $pid ignored SIGTERM for 30s, killing it" >&2
    kill -9 "$pid" 2>/dev/null || true
    while alive "$pid"; do sleep 0.1; done
  fi
  # Give the orphan's reaper (PID 1) a moment, so no <defunct> java is left in ps.
  for ((i = 0; i < 20; i++)); do
    [[ -e "/proc/$pid" ]] || break
    sleep 0.1
  done
  rm -f "$PID_FILE"
  echo "kafka: stopped (pid $pid)"
}

cmd_status() {
  local pid
  if pid="$(broker_pid)"; then
    if metadata_ready; then
      echo "kafka: running (pid $pid) on $BOOTSTRAP"
    else
      echo "kafka: process $pid is up but $BOOTSTRAP does not answer metadata"
      return 2
    fi
  else
    echo "kafka: not running ($DATA_DIR)"
    return 1
  fi
}

case "${1:-}" in
  fetch) cmd_fetch ;;
  start) cmd_start ;;
  stop) cmd_stop ;;
  status) cmd_status ;;
  *)
    echo "usage: $0 {fetch|start|stop|status}" >&2
    exit 2
    ;;
esac
