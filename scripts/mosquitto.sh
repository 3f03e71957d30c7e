#!/usr/bin/env bash
# A throwaway MQTT broker from Debian's mosquitto package, for the bridge's tests and
# local trials of the Home Assistant set-up. Loopback only, a username and password
# required, retained messages persisted in its folder (they survive a restart).
#
#   scripts/mosquitto.sh install                         # apt-get install mosquitto if missing
#   scripts/mosquitto.sh start DIR PORT USER PASSWORD [TLS_PORT]
#                                                        # background; pid in DIR/mosquitto.pid
#   scripts/mosquitto.sh stop DIR
#
# With TLS_PORT, a second listener there speaks mutual TLS only: a CA made for DIR signs
# the broker's certificate (127.0.0.1, localhost) and one client certificate, in DIR/tls
# (ca.crt, server.{crt,key}, client.{crt,key}); a client needs the client certificate
# and the username and password.
set -euo pipefail
SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

bin() { command -v mosquitto || { [[ -x /usr/sbin/mosquitto ]] && echo /usr/sbin/mosquitto; }; }

# make_tls DIR: the CA and the two certificates (kept across restarts of the same DIR).
make_tls() {
  PKI="$1/tls"
  [[ -f "$PKI/client.crt" ]] && return 0
  mkdir -p "$PKI"; chmod 700 "$PKI"
  # shellcheck source=scripts/k8s/pki.sh  # its cert(): one key and certificate per name
  source "$SCRIPT_DIR/k8s/pki.sh"
  openssl genrsa -out "$PKI/ca.key" 2048 2>/dev/null
  openssl req -x509 -new -key "$PKI/ca.key" -subj "/CN=facestream-test-mqtt-ca" -days 30 \
    -sha256 -addext "basicConstraints=critical,CA:TRUE" \
    -addext "keyUsage=critical,keyCertSign,cRLSign,digitalSignature" -out "$PKI/ca.crt" 2>/dev/null
  cert server mosquitto "" "DNS:localhost,IP:127.0.0.1" serverAuth
  cert client facestream-bridge "" "" clientAuth
}

install() {
  if bin >/dev/null; then return 0; fi
  if [[ "$(id -u)" != 0 ]]; then
    echo "mosquitto.sh: mosquitto is not installed (apt-get install mosquitto, as root)" >&2
    exit 1
  fi
  echo "[mosquitto] installing Debian's mosquitto package" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -q mosquitto >/dev/null 2>&1 \
    || { apt-get update -q >/dev/null && apt-get install -y -q mosquitto >/dev/null; }
  bin >/dev/null
}

cmd="${1:-}"; shift || true
case "$cmd" in
  install) install ;;
  start)
    dir="$1"; port="$2"; user="$3"; password="$4"; tls_port="${5:-}"
    install
    mkdir -p "$dir/data"
    if [[ ! -f "$dir/passwd" ]]; then
      touch "$dir/passwd"; chmod 600 "$dir/passwd"
      mosquitto_passwd -b "$dir/passwd" "$user" "$password"
    fi
    cat > "$dir/mosquitto.conf" <<EOF
listener $port 127.0.0.1
allow_anonymous false
password_file $dir/passwd
persistence true
persistence_location $dir/data/
autosave_interval 1
pid_file $dir/mosquitto.pid
log_dest file $dir/mosquitto.log
$( [[ "$(id -u)" == 0 ]] && echo "user root" )
EOF
    if [[ -n "$tls_port" ]]; then
      make_tls "$dir"
      cat >> "$dir/mosquitto.conf" <<EOF
listener $tls_port 127.0.0.1
cafile $dir/tls/ca.crt
certfile $dir/tls/server.crt
keyfile $dir/tls/server.key
require_certificate true
EOF
    fi
    "$(bin)" -c "$dir/mosquitto.conf" -d
    # Ready when the port accepts connections.
    for _ in $(seq 1 100); do
      if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then exit 0; fi
      sleep 0.1
    done
    echo "mosquitto did not listen on $port; its log:" >&2
    cat "$dir/mosquitto.log" >&2 || true
    exit 1
    ;;
  stop)
    dir="$1"
    if [[ -f "$dir/mosquitto.pid" ]]; then
      pid="$(cat "$dir/mosquitto.pid")"
      kill "$pid" 2>/dev/null || true
      for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
      rm -f "$dir/mosquitto.pid"
    fi
    ;;
  *) echo "usage: $0 install | start DIR PORT USER PASSWORD [TLS_PORT] | stop DIR" >&2; exit 2 ;;
esac
