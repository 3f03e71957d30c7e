#!/bin/bash
# One Kafka node (broker + KRaft controller) in a pod. Clients inside the cluster reach
# it by the Service name KAFKA_ADVERTISED_HOST (bootstrap and advertised address are the
# same name, so a client's metadata never points at a pod IP it cannot keep).
# Optional: KAFKA_EXTERNAL_ADVERTISED=host:port adds a listener on KAFKA_EXTERNAL_PORT
# (9094) advertised as that address, for clients outside the cluster (a NodePort).
# The data folder is formatted on first start with a random cluster id.
set -euo pipefail
data="${KAFKA_DATA_DIR:-/var/lib/kafka/data}"
port="${KAFKA_PORT:-9092}"
cport="${KAFKA_CONTROLLER_PORT:-9093}"
host="${KAFKA_ADVERTISED_HOST:?KAFKA_ADVERTISED_HOST must be set to the DNS name of the Service}"
conf=/tmp/server.properties
mkdir -p "$data"
listeners="PLAINTEXT://0.0.0.0:$port,CONTROLLER://127.0.0.1:$cport"
advertised="PLAINTEXT://$host:$port"
protocols="PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT"
if [[ -n "${KAFKA_EXTERNAL_ADVERTISED:-}" ]]; then
  listeners+=",EXTERNAL://0.0.0.0:${KAFKA_EXTERNAL_PORT:-9094}"
  advertised+=",EXTERNAL://$KAFKA_EXTERNAL_ADVERTISED"
  protocols+=",EXTERNAL:PLAINTEXT"
fi
cat >"$conf" <<PROPS
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:$cport
listeners=$listeners
advertised.listeners=$advertised
listener.security.protocol.map=$protocols
inter.broker.listener.name=PLAINTEXT
controller.listener.names=CONTROLLER
log.dirs=$data
num.partitions=${KAFKA_NUM_PARTITIONS:-4}
auto.create.topics.enable=true
offsets.topic.replication.factor=1
offsets.topic.num.partitions=4
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
num.network.threads=2
num.io.threads=4
log.retention.hours=24
PROPS
# shellcheck disable=SC2206  # a list of JVM flags
java=(java ${KAFKA_HEAP_OPTS:--Xms256m -Xmx512m} -XX:+UseG1GC -XX:MaxGCPauseMillis=20
  -Djava.awt.headless=true -Dkafka.logs.dir=/tmp/kafka-logs
  -Dlog4j2.configurationFile=/opt/kafka/log4j2.xml -cp "/opt/kafka/libs/*")
if [[ ! -f "$data/meta.properties" ]]; then
  id="$(head -c 16 /dev/urandom | base64 | tr '+/' '-_' | tr -d '=\n' | sed 's/^-/A/')"
  "${java[@]}" kafka.tools.StorageTool format --ignore-formatted -t "$id" -c "$conf"
fi
exec "${java[@]}" kafka.Kafka "$conf"
