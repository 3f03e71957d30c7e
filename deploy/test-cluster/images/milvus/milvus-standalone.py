"""Milvus standalone in a pod: the binary of PyPI's `milvus` package, in the foreground.

Like pipeline/gallery/milvus_server.py, but for a container: fixed ports (the pod has its
own network namespace), data on the mounted volume, SIGTERM passed on with time for
Milvus to flush. The proxy (19530, gRPC) listens on the pod's address; the embedded etcd
only on 127.0.0.1 inside the pod; 9091 serves /healthz and /metrics for the probes.
"""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from milvus import MilvusServer, MilvusServerConfig

DATA = Path(os.environ.get("MILVUS_STANDALONE_DATA", "/var/lib/milvus"))
PORT = int(os.environ.get("MILVUS_STANDALONE_PORT", "19530"))
HEALTH_PORT = int(os.environ.get("MILVUS_STANDALONE_HEALTH_PORT", "9091"))
ETCD_CLIENT, ETCD_PEER = 2379, 2380
STOP_GRACE_S = 30


def main() -> None:
    conf = DATA / "configs" / "etcd-embed.yaml"
    conf.parent.mkdir(parents=True, exist_ok=True)
    peer, client = f"http://127.0.0.1:{ETCD_PEER}", f"http://127.0.0.1:{ETCD_CLIENT}"
    conf.write_text(
        f"name: default\nlisten-peer-urls: {peer}\ninitial-advertise-peer-urls: {peer}\n"
        f"initial-cluster: default={peer}\nlisten-client-urls: {client}\n"
        f"advertise-client-urls: {client}\n"
    )
    os.environ["ETCD_CONFIG_PATH"] = str(conf)
    config = MilvusServerConfig(data_dir=str(DATA), proxy_port=PORT, etcd_port=ETCD_CLIENT)
    server = MilvusServer(config, wait_for_started=False)
    server.webservice_port = HEALTH_PORT
    stopping = []
    signal.signal(signal.SIGTERM, lambda *_: stopping.append(1))
    signal.signal(signal.SIGINT, lambda *_: stopping.append(1))
    server.start()
    proc = server.server_proc
    print(f"milvus: pid {proc.pid}, port {PORT}, data {DATA}, logs {DATA / 'logs'}", flush=True)
    while not stopping and proc.poll() is None:
        time.sleep(0.5)
    code = proc.poll()
    if code is None:
        proc.terminate()
        try:
            code = proc.wait(timeout=STOP_GRACE_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            code = proc.wait()
    else:
        # Exited on its own: show why in the pod's log.
        for name in ("milvus-stdout.log", "milvus-stderr.log"):
            log = DATA / "logs" / name
            if log.is_file():
                sys.stdout.write(log.read_text(errors="replace")[-4000:])
    server.server_proc = None
    server.stop()
    sys.exit(0 if stopping else (code or 1))


if __name__ == "__main__":
    main()
