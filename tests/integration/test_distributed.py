"""The gallery is shared state: a two-node Ray cluster runs ``facestream run``, the REST
API runs in a separate process (its own Ray), ``facestream gallery`` runs in a third,
and all of them see the same people through one Milvus server and one PostgreSQL
catalogue. Every part is real and started by the repo's own scripts and fixtures.

While a clip streams in a loop:
- a person enrolled through the REST API is identified in the identities topic;
- after their removal no identification of them is published for a frame captured later;
- a person enrolled with the CLI is identified too;
- PostgreSQL and then the Milvus server restart mid-stream: the workers hold the frames
  back (the consumer group's lag grows while they are down), recover by themselves, and
  the frame accounting shows nothing lost and nothing in the DLQ.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from pipeline.bench.ray_nodes import cluster_processes, local_cluster
from pipeline.gallery.milvus_server import LocalMilvus
from pipeline.models.store import ModelStore
from pipeline.procs import free_ports
from pipeline.stream.audit import frame_id, read_all
from pipeline.stream.monitor import LagProbe
from tests.support.stores import facestream_env, postgres_database
from tests.support.stream import LIN, clip_media, stream_cfg
from tests.support.wait import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.shared_data]

FACESTREAM = str(Path(sys.executable).with_name("facestream"))
REPO = Path(__file__).resolve().parents[2]
# Generous guards against a hang; every wait below ends on an event, not on a timer.
START_S = 600.0
EVENT_S = 240.0
TOKEN = "two-node-test-token-0123456789"


# -- a two-node Ray cluster on this machine --------------------------------------------


@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[str]:
    """Address of a head node and a second node (``ray start --address``), each with its
    own resources (``pipeline.bench.ray_nodes``); all their processes are stopped
    afterwards (``ray stop`` would also stop every other Ray on the machine)."""
    with local_cluster(2) as cluster:
        yield cluster.address
    assert not cluster_processes(cluster.temp_dir), "Ray processes left behind"


# -- watching the output topics ----------------------------------------------------------


class TopicWatch:
    """Collects the events of some topics in a background consumer, with their arrival."""

    def __init__(self, bootstrap: str, topics: list[str]) -> None:
        from kafka import KafkaConsumer

        self.events: list[tuple[str, float, dict[str, Any]]] = []
        self._cv = threading.Condition()
        self._stop = threading.Event()
        self._consumer = KafkaConsumer(
            *topics, bootstrap_servers=bootstrap, auto_offset_reset="earliest",
            enable_auto_commit=False, group_id=None, consumer_timeout_ms=500,
        )  # fmt: skip
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            for rec in self._consumer.poll(timeout_ms=300).values():
                with self._cv:
                    for r in rec:
                        self.events.append((r.topic, time.time(), json.loads(r.value)))
                    self._cv.notify_all()

    def wait_for(
        self, what: str, pred: Callable[[str, float, dict[str, Any]], bool], timeout: float
    ) -> tuple[str, float, dict[str, Any]]:
        deadline = time.monotonic() + timeout
        with self._cv:
            while True:
                for item in self.events:
                    if pred(*item):
                        return item
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"no event within {timeout:.0f}s: {what}")
                self._cv.wait(min(left, 1.0))

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        self._consumer.close()


def _is_identity(ident_id: str) -> Callable[[str, float, dict[str, Any]], bool]:
    def pred(topic: str, _: float, ev: dict[str, Any]) -> bool:
        return topic.endswith(".identities") and ev["identity"]["identity_id"] == ident_id

    return pred


# -- the test ------------------------------------------------------------------------------


def _stream_toml(cfg: Any, clip: Path, path: Path) -> Path:
    # 2 fps: on a busy 2-core machine running two Ray nodes, another Ray, Kafka, Milvus
    # and PostgreSQL, the pipeline must still work off an outage's backlog faster than
    # the camera adds to it.
    t, k = cfg.topics, cfg.kafka
    path.write_text(
        f'[stream.kafka]\nbootstrap_servers = "{k.bootstrap_servers}"\n'
        f'group_id = "{k.group_id}"\n[stream.topics]\n'
        + "".join(
            f'{name} = "{getattr(t, name)}"\n'
            for name in ("frames", "detections", "identities", "dlq")
        )
        + "[stream.workers]\ncount = 2\nnum_cpus = 0.3\nsession_timeout_ms = 8000\n"
        "spread = true\nretry_backoff_s = 0.5\n"
        f'[stream.analyzer]\napp_name = "{cfg.analyzer.app_name}"\nnum_cpus = 0.3\n'
        f'[stream.embedder]\napp_name = "{cfg.embedder.app_name}"\nnum_cpus = 0.3\n'
        f'[stream.search]\napp_name = "{cfg.search.app_name}"\nnum_cpus = 0.1\n'
        "[stream.ingest]\nnum_cpus = 0.05\n"
        f'[[stream.cameras]]\nid = "stage"\nurl = "{clip}"\nfps = 2\nloop = true\n'
        "realtime = true\n"
    )
    return path


def test_two_nodes_share_one_gallery_through_restarts(
    ray_cluster: str,
    kafka_bootstrap: str,
    model_store: ModelStore,
    milvus_local: LocalMilvus,
    milvus_space_module: dict[str, str],
    postgres_url: tuple[str, str, Path],
    shared_dir: Path,
    tmp_path: Path,
) -> None:
    media = clip_media(shared_dir)
    db_url, db_password = postgres_database(postgres_url, "two_node")
    api_port = free_ports(1)[0]
    settings_env = {
        **os.environ,
        **facestream_env(
            model_store,
            milvus_space_module,
            tmp_path / "gallery",
            catalogue_url=db_url,
            catalogue_password=db_password,
            api_token=TOKEN,
        ),
    }
    settings_env.pop("RAY_ADDRESS", None)
    cfg = stream_cfg(kafka_bootstrap, "d")
    toml = _stream_toml(cfg, media["clip"], tmp_path / "stream.toml")
    logs = tmp_path / "logs"
    logs.mkdir()
    watch = TopicWatch(kafka_bootstrap, [cfg.topics.identities, cfg.topics.detections])
    run_out = (tmp_path / "run.json").open("w")
    run_log = (logs / "run.log").open("w")
    api_log = (logs / "api.log").open("w")
    run = subprocess.Popen(
        [FACESTREAM, "run", "--stream-config", str(toml), "--json"],
        env={**settings_env, "RAY_ADDRESS": ray_cluster},  # the two-node cluster
        stdout=run_out, stderr=run_log, cwd=tmp_path,
    )  # fmt: skip
    api = subprocess.Popen(
        [FACESTREAM, "serve", "--port", str(api_port)],
        env=settings_env,  # a Ray of its own: a separate process, same stores
        stdout=api_log, stderr=subprocess.STDOUT, cwd=tmp_path,
    )  # fmt: skip
    http = httpx.Client(base_url=f"http://127.0.0.1:{api_port}", timeout=120.0)
    auth = {"Authorization": f"Bearer {TOKEN}"}

    def log_tail() -> str:
        run_log.flush()
        api_log.flush()
        return "\n".join(
            f"--- {p.name}\n{p.read_text(errors='replace')[-3000:]}" for p in logs.iterdir()
        )

    try:
        # The stream is up: frames are analysed on the cluster.
        watch.wait_for(
            "first detection event",
            lambda topic, _, ev: topic == cfg.topics.detections,
            START_S,
        )

        def api_up() -> bool:
            assert api.poll() is None, log_tail()
            with contextlib.suppress(httpx.HTTPError):
                return http.get("/healthz").status_code == 200
            return False

        wait_until("the REST API answers", api_up, START_S)

        # 1. Enrol through the REST API: identified by the running stream.
        with media[LIN].open("rb") as f:
            r = http.post(
                "/identities",
                files=[("images", (media[LIN].name, f.read(), "image/png"))],
                data={"name": LIN},
                headers=auth,
            )
        assert r.status_code == 201, r.text
        lin = r.json()["identity"]["identity_id"]
        enrolled_at = time.time()
        _, seen_at, ev = watch.wait_for(
            "identification after REST enrolment", _is_identity(lin), EVENT_S
        )
        latency_s = seen_at - enrolled_at
        print(f"REST enrolment -> identities topic: {latency_s:.1f} s")
        assert ev["identity"]["name"] == LIN

        # 2. Remove through the REST API: no later frame identifies them.
        r = http.delete(f"/identities/{lin}", headers=auth)
        assert r.status_code == 200, r.text
        removed_ms = int(time.time() * 1000)
        # Wait for frames captured after the removal to be processed (detections of them).
        for n in range(1, 11):
            watch.wait_for(
                f"{n} detections captured after the removal",
                lambda topic, _, ev, n=n: (
                    topic == cfg.topics.detections
                    and ev["capture_ts_ms"] > removed_ms
                    and sum(
                        1
                        for t, _, e in watch.events
                        if t == cfg.topics.detections and e["capture_ts_ms"] > removed_ms
                    )
                    >= n
                ),
                EVENT_S,
            )
        late = [
            e
            for t, _, e in list(watch.events)
            if t == cfg.topics.identities
            and e["identity"]["identity_id"] == lin
            and e["capture_ts_ms"] > removed_ms
        ]
        assert not late, late

        # 3. Enrol with the CLI from another process: identified as well.
        res = subprocess.run(
            [FACESTREAM, "gallery", "enroll", str(media[LIN]), "--name", f"{LIN} (cli)",
             "--pick", "largest", "--json"],
            env=settings_env, capture_output=True, text=True, timeout=600, cwd=tmp_path,
        )  # fmt: skip
        assert res.returncode == 0, res.stderr
        lin2 = json.loads(res.stdout)["identity"]["identity_id"]
        watch.wait_for("identification after CLI enrolment", _is_identity(lin2), EVENT_S)

        # 4. PostgreSQL goes away mid-stream: frames are held back, then caught up.
        _, _, pg_dir = postgres_url
        pg = str(REPO / "scripts" / "postgres.sh")
        probe = LagProbe(cfg)  # frames the recognition group has not committed yet

        def lag() -> int:
            n = probe()
            return -1 if n is None else n

        lag0 = lag()
        subprocess.run(["bash", pg, "stop", str(pg_dir)], check=True, timeout=120)
        try:
            wait_until(
                "frames held back while PostgreSQL is down",
                lambda: lag() >= lag0 + 10,
                EVENT_S,
            )
        finally:
            port = db_url.rsplit(":", 1)[1].split("/")[0]
            subprocess.run(
                ["bash", pg, "start", str(pg_dir), port, postgres_url[1]],
                check=True, timeout=300, capture_output=True,
            )  # fmt: skip
        wait_until("the frames held back are processed", _backlog_cleared(cfg), EVENT_S)

        # 5. The Milvus server restarts mid-stream: the same.
        lag0 = lag()
        milvus_local.stop()
        try:
            wait_until(
                "frames held back while Milvus is down",
                lambda: lag() >= lag0 + 10,
                EVENT_S,
            )
        finally:
            milvus_local.restart()
        wait_until("the frames held back are processed", _backlog_cleared(cfg), EVENT_S)
        probe.close()
        back_ms = int(time.time() * 1000)
        watch.wait_for(
            "identification after the restarts",
            lambda topic, _, ev: _is_identity(lin2)(topic, _, ev) and ev["capture_ts_ms"] > back_ms,
            EVENT_S,
        )
    finally:
        for proc in (run, api):
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)
        for proc in (run, api):
            try:
                proc.wait(timeout=180)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        http.close()
        watch.close()
        run_out.close()
        run_log.close()
        api_log.close()
    assert run.returncode == 0, log_tail()
    summary = json.loads((tmp_path / "run.json").read_text().strip().splitlines()[-1])

    # The workers ran on both nodes (Ray's SPREAD placement, stream.workers.spread).
    print("worker nodes:", summary["worker_nodes"], "processed:", summary["processed"])
    assert len(summary["worker_nodes"]) == 2, summary
    # Frame accounting: every frame the group committed is in the detections exactly
    # once (none lost, none in the DLQ); frames after the committed offsets are still in
    # Kafka for the next run, not lost.
    frames_in = read_all(kafka_bootstrap, cfg.topics.frames).records
    committed = _committed(cfg)
    consumed = {frame_id(r) for r in frames_in if r.offset < committed.get(r.partition, 0)}
    detected = [str(d["event_id"]) for d in read_all(kafka_bootstrap, cfg.topics.detections).json()]
    dlq = read_all(kafka_bootstrap, cfg.topics.dlq).records
    assert consumed, "no frame was committed"
    assert not dlq, [r.value[:200] for r in dlq]
    lost = consumed - set(detected)
    assert not lost, sorted(lost)[:10]
    print(f"frames: {len(frames_in)} produced, {len(consumed)} committed, 0 lost, 0 in the DLQ")


def _frame_ends(cfg: Any) -> dict[int, int]:
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(bootstrap_servers=cfg.kafka.bootstrap_servers)
    try:
        parts = consumer.partitions_for_topic(cfg.topics.frames) or set()
        ends = consumer.end_offsets([TopicPartition(cfg.topics.frames, p) for p in parts])
        return {tp.partition: off for tp, off in ends.items()}
    finally:
        consumer.close()


def _backlog_cleared(cfg: Any) -> Callable[[], bool]:
    """True once the group has committed every frame that was in the topic when this was
    made: the backlog of an outage is worked off, whether or not the pipeline runs faster
    than the camera (on a busy 2-core machine it may not)."""
    ends = _frame_ends(cfg)

    def cleared() -> bool:
        done = _committed(cfg)
        # A partition no frame went to has no committed offset at all.
        return all(end == 0 or done.get(p, -1) >= end for p, end in ends.items())

    return cleared


def _committed(cfg: Any) -> dict[int, int]:
    """The recognition group's committed offset per partition of the frames topic."""
    from kafka import KafkaAdminClient, KafkaConsumer, TopicPartition

    admin = KafkaAdminClient(bootstrap_servers=cfg.kafka.bootstrap_servers)
    consumer = KafkaConsumer(bootstrap_servers=cfg.kafka.bootstrap_servers)
    try:
        parts = consumer.partitions_for_topic(cfg.topics.frames) or set()
        tps = [TopicPartition(cfg.topics.frames, p) for p in sorted(parts)]
        got = admin.list_group_offsets({cfg.kafka.group_id: tps}).get(cfg.kafka.group_id, {})
        return {tp.partition: m.offset for tp, m in got.items() if m is not None}
    finally:
        admin.close()
        consumer.close()
