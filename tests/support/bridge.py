"""The bridge's receivers, real ones: a mosquitto broker (scripts/mosquitto.sh), an MQTT
subscriber that records what Home Assistant would read, and an HTTP receiver that checks
each webhook's signature and can be told to fail."""

from __future__ import annotations

import json
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from pipeline.bridge.signing import EVENT_ID, verify
from tests.support.wait import wait_until

REPO_ROOT = Path(__file__).resolve().parents[2]
SCRIPT = str(REPO_ROOT / "scripts" / "mosquitto.sh")


@dataclass
class LocalMosquitto:
    root: Path
    port: int
    username: str = "facestream"
    password: str = "bridge-test-password"
    tls_port: int | None = None  # a mutual-TLS listener besides the plain one

    def start(self) -> None:
        tls = [str(self.tls_port)] if self.tls_port is not None else []
        res = subprocess.run(
            ["bash", SCRIPT, "start", str(self.root), str(self.port), self.username,
             self.password, *tls],
            capture_output=True,
            text=True,
            timeout=300,
        )
        if res.returncode != 0:
            raise RuntimeError(f"mosquitto did not start: {res.stderr.strip()}")

    def stop(self) -> None:
        subprocess.run(["bash", SCRIPT, "stop", str(self.root)], capture_output=True, timeout=60)

    def settings(self, **extra: Any) -> dict[str, Any]:
        """The bridge's [bridge.mqtt] section for this broker."""
        return {
            "host": "127.0.0.1",
            "port": self.port,
            "username": self.username,
            "password": self.password,
            **extra,
        }

    def tls_settings(self, **extra: Any) -> dict[str, Any]:
        """The [bridge.mqtt] section for the mutual-TLS listener: the broker's CA, the
        client certificate the script made, and the password."""
        assert self.tls_port is not None, "started without a TLS listener"
        pki = self.root / "tls"
        return self.settings(
            port=self.tls_port,
            tls=True,
            ca_file=str(pki / "ca.crt"),
            cert_file=str(pki / "client.crt"),
            key_file=str(pki / "client.key"),
            **extra,
        )


@dataclass
class Message:
    topic: str
    payload: bytes
    retain: bool

    def json(self) -> Any:
        return json.loads(self.payload)


class MqttReader:
    """Subscribes to ``topics`` and keeps every message (reconnecting after an outage)."""

    def __init__(self, broker: LocalMosquitto, topics: list[str]) -> None:
        import paho.mqtt.client as paho
        from paho.mqtt.enums import CallbackAPIVersion

        self.messages: list[Message] = []
        self._lock = threading.Lock()
        self.client = paho.Client(CallbackAPIVersion.VERSION2)
        self.client.username_pw_set(broker.username, broker.password)
        self.client.reconnect_delay_set(0.2, 2)

        def on_connect(c: Any, *_: Any) -> None:
            for t in topics:
                c.subscribe(t, qos=1)

        def on_message(_c: Any, _u: Any, msg: Any) -> None:
            with self._lock:
                self.messages.append(Message(msg.topic, bytes(msg.payload), bool(msg.retain)))

        self.client.on_connect = on_connect
        self.client.on_message = on_message
        self.client.connect_async("127.0.0.1", broker.port)
        self.client.loop_start()

    def snapshot(self) -> list[Message]:
        with self._lock:
            return list(self.messages)

    def on(self, prefix: str) -> list[Message]:
        return [m for m in self.snapshot() if m.topic.startswith(prefix)]

    def wait(self, what: str, pred: Callable[[list[Message]], bool], timeout_s: float) -> None:
        wait_until(what, lambda: pred(self.snapshot()), timeout_s, every_s=0.1)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@dataclass
class WebhookReceiver:
    """An HTTP server on loopback: each POST checked against ``key``; answers ``status``
    (200 unless told otherwise)."""

    key: bytes
    status: int = 200
    received: list[dict[str, Any]] = field(default_factory=list)  # accepted, in order
    attempts: int = 0
    bad_signatures: int = 0

    def __post_init__(self) -> None:
        receiver = self
        self._lock = threading.Lock()

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                with receiver._lock:
                    receiver.attempts += 1
                    ok = verify(receiver.key, self.headers, body, time.time())
                    status = receiver.status if ok else 401
                    if not ok:
                        receiver.bad_signatures += 1
                    elif status == 200:
                        receiver.received.append(
                            {"id": self.headers[EVENT_ID], "event": json.loads(body)}
                        )
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *_: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"

    def set_status(self, status: int) -> None:
        with self._lock:
            self.status = status

    def ids(self) -> list[str]:
        with self._lock:
            return [r["id"] for r in self.received]

    def events(self) -> list[dict[str, Any]]:
        with self._lock:
            return [r["event"] for r in self.received]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


# -- the pipeline's output events, as the workers publish them --------------------------
T0_MS = 1_790_000_000_000
THRESHOLD = {
    "value": 0.5,
    "kind": "open_set",
    "target_far": 0.01,
    "gallery_size": 2,
    "extrapolated": False,
    "provenance": "test",
}


def identity_event(camera: str, seq: int, who: dict[str, str], track: str, sim: float = 0.8):
    from pipeline.stream.schemas import IdentityEvent

    return IdentityEvent(
        event_id=f"{camera}:{seq}:0",
        type="identified",
        camera_id=camera,
        seq=seq,
        track_id=track,
        identity=who,
        previous=None,
        similarity=sim,
        best_similarity=sim,
        votes=2,
        model_version="m1",
        collection="faces_m1",
        box=[1.0, 2.0, 50.0, 60.0],
        threshold=THRESHOLD,
        crop_id=None,
        track_started_ts_ms=T0_MS,
        capture_ts_ms=T0_MS + seq * 1000,
        published_ts_ms=T0_MS + seq * 1000 + 50,
        latency_ms=50.0,
    )


def face(camera: str, seq: int, i: int, track: str, decision: str, who: Any = None) -> dict:
    return {
        "face_id": f"{camera}:{seq}:{i}",
        "box": [1.0, 2.0, 50.0, 60.0],
        "detector_score": 0.9,
        "landmarks": [[1.0, 1.0]] * 5,
        "landmark_scheme": "dlib5",
        "quality": {"passed": decision != "rejected", "reasons": [], "metrics": {}},
        "decision": decision,
        "identity": who if decision == "identity" else None,
        "similarity": None if decision == "rejected" else (0.8 if who else 0.2),
        "model_version": None if decision == "rejected" else "m1",
        "track_id": track,
        "track_identity": who,
    }


def detection_event(camera: str, seq: int, faces: list[dict], ts_ms: int | None = None):
    from pipeline.stream.schemas import DetectionEvent

    ts = T0_MS + seq * 1000 if ts_ms is None else ts_ms
    return DetectionEvent(
        event_id=f"{camera}:{seq}",
        camera_id=camera,
        seq=seq,
        capture_ts_ms=ts,
        published_ts_ms=ts + 50,
        latency_ms=50.0,
        frame={"topic": "f", "partition": 0, "offset": seq, "width": 640, "height": 360},
        model_version="m1",
        collection="faces_m1",
        threshold=0.5,
        threshold_detail=THRESHOLD,
        faces=faces,
        worker="w0",
        analyzer=None,
        timings_ms={},
    )
