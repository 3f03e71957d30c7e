"""Shared fixtures: real infrastructure (Kafka broker, Ray, a Milvus server, Milvus Lite,
PostgreSQL), no mocks.

Expensive services are session-scoped and started only when a test asks for them, so a
unit-only run never starts a JVM or Ray.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from pipeline.config.face import FaceConfig
from pipeline.face.align import Aligner
from pipeline.face.analyze import FacePipeline
from pipeline.face.embed import Embedder
from pipeline.models.store import ModelStore
from tests.support.models import TwoVersions, build_two_versions
from tests.support.stores import drop_milvus_space, facestream_env, milvus_space_settings

if TYPE_CHECKING:
    from pymilvus import MilvusClient

    from pipeline.config.settings import Settings
    from pipeline.gallery.milvus_server import LocalMilvus
    from pipeline.stream.broker import LocalKafka
    from tests.support.bridge import LocalMosquitto, MqttReader, WebhookReceiver

# Every Ray cluster of the tests runs as facestream runs its own: token authentication
# on, with one token for the session (the processes the tests start inherit it).
os.environ["RAY_AUTH_MODE"] = "token"
os.environ.setdefault("RAY_AUTH_TOKEN", secrets.token_hex(32))
# Serve kills an HTTP proxy that is not ready within 5 s (health checks: 10 s); on a busy
# 2-core machine a starting proxy can take longer, and the API tests then fail at
# set-up. Processes the tests start inherit these.
os.environ.setdefault("RAY_SERVE_PROXY_READY_CHECK_TIMEOUT_S", "60")
os.environ.setdefault("RAY_SERVE_PROXY_HEALTH_CHECK_TIMEOUT_S", "60")

REPO_ROOT = Path(__file__).resolve().parents[1]


def _shared_root() -> Path:
    override = os.environ.get("FACESTREAM_SHARED")
    return Path(override).expanduser().resolve() if override else REPO_ROOT.parent / "shared"


def _shared_missing_reason() -> str | None:
    root = _shared_root()
    if not root.is_dir() or not any(root.iterdir()):
        return (
            f"shared test data not found at {root} "
            "(expected ../shared beside the repo; set FACESTREAM_SHARED to override)"
        )
    return None


# The fast lane (`make test-fast`, `-m "not slow"`): the unit tests and the integration
# modules below, whose tests take seconds each on the session's shared services. Every
# other integration module (a stream pipeline, a Ray or Serve cluster, a server process
# of its own, training), the browser tests and the tests named below take half a minute
# or more (pytest --durations); they run in `make test` only.
QUICK_INTEGRATION = {
    "test_api_limits.py",
    "test_bridge.py",
    "test_catalogue_names.py",
    "test_gallery_calibrate.py",
    "test_gallery_core.py",
    "test_kafka_smoke.py",
    "test_live_file.py",
    "test_milvus_smoke.py",
    "test_monitor.py",
    "test_open_set_threshold.py",
    "test_review.py",
    "test_status.py",
    "test_swap_repair.py",
}
SLOW_TESTS = {  # in the unit tests and the quick modules
    "test_dlib_port.py",  # builds a model from dlib's weights twice
    "test_k8s_schemas.py",  # validates every chart object against the CRDs
    "test_metrics_exposure.py::test_ray_processes_export_every_metric_through_the_node_agent",
    "test_detect_default.py::test_every_detector_finds_the_face_and_nothing_in_a_blank_frame"
    "[dlib_cnn]",
    "test_eval_pairs.py::test_lfw_sample",
    "test_gallery_core.py::test_tight_low_res_crops_enrol_and_match_scene_photos",
    "test_cli_markup.py::test_rejected_enrolment_names_a_markup_file_literally",
}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        kind = item.path.parent.name
        name = item.path.name
        test = f"{name}::{item.name}"
        if (
            (kind == "integration" and name not in QUICK_INTEGRATION)
            or kind in ("browser", "gpu", "e2e_k8s")
            or name in SLOW_TESTS
            or test in SLOW_TESTS
        ):
            item.add_marker(pytest.mark.slow)


def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("shared_data") is not None:
        reason = _shared_missing_reason()
        if reason is not None:
            pytest.skip(reason)


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """The ../shared test-data directory; the requesting test skips when it is absent."""
    reason = _shared_missing_reason()
    if reason is not None:
        pytest.skip(reason)
    return _shared_root()


@pytest.fixture(scope="session")
def kafka_local() -> Iterator[LocalKafka]:
    """A real single-node Kafka broker shared by the session, on ports fixed for the
    session and a data dir of its own: a fault test can restart it in place (topics and
    offsets kept, clients reconnect)."""
    from pipeline.procs import free_ports
    from pipeline.stream.broker import LocalKafka

    data_dir = Path(tempfile.mkdtemp(prefix="facestream-test-kafka-"))
    port, controller = free_ports(2)
    broker = LocalKafka(port=port, controller_port=controller, data_dir=data_dir)
    try:
        broker.start()
        yield broker
    finally:
        try:
            broker.stop()
        finally:
            shutil.rmtree(data_dir, ignore_errors=True)


@pytest.fixture(scope="session")
def kafka_bootstrap(kafka_local: LocalKafka) -> str:
    """Bootstrap servers of :func:`kafka_local`."""
    return kafka_local.bootstrap_servers


@pytest.fixture(scope="session")
def ray_local() -> Iterator[None]:
    """A local Ray instance for the session; its session files go to a removed temp dir."""
    import ray

    from pipeline.procs import init_ray

    # Short path under /tmp: Ray puts unix sockets in it (108-byte path limit).
    temp_dir = tempfile.mkdtemp(prefix="fs-ray-", dir="/tmp")
    init_ray(  # on loopback, as facestream starts a local Ray
        address="local",  # never attach to a cluster named by RAY_ADDRESS
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,
        object_store_memory=256 * 1024 * 1024,
        _temp_dir=temp_dir,
    )
    try:
        yield
    finally:
        ray.shutdown()
        shutil.rmtree(temp_dir, ignore_errors=True)


@pytest.fixture(scope="session")
def milvus_local() -> Iterator[LocalMilvus]:
    """A real Milvus standalone server (PyPI ``milvus``) shared by the session, started
    the way ``facestream`` starts its local one; stopped at the end."""
    from pipeline.gallery.milvus_server import LocalMilvus
    from pipeline.procs import free_ports

    root = Path(tempfile.mkdtemp(prefix="fs-milvus-", dir="/tmp"))
    server = LocalMilvus(root / "milvus", free_ports(1)[0])
    try:
        server.attach()
        yield server
    finally:
        try:
            _kill_milvus(server)
            server.release()
        finally:
            shutil.rmtree(root, ignore_errors=True)


def _kill_milvus(server: LocalMilvus) -> None:
    """Stop a throw-away server at once: its data is removed next, so the graceful stop
    (flushing segments, up to 30 s) would be time spent for nothing."""
    import json
    import signal

    from pipeline.gallery.milvus_server import STATE_FILE

    try:
        pid = int(json.loads((server.root / STATE_FILE).read_text())["pid"])
    except (OSError, ValueError, KeyError):
        return
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


@pytest.fixture(scope="session")
def milvus_server(milvus_local: LocalMilvus) -> str:
    """URI of :func:`milvus_local`."""
    return milvus_local.uri


@pytest.fixture
def milvus_space(milvus_server: str) -> Iterator[dict[str, str]]:
    """:func:`milvus_space_settings` on the session's server, dropped after the test."""
    space = milvus_space_settings(milvus_server)
    yield space
    drop_milvus_space(space)


@pytest.fixture(scope="module")
def milvus_space_module(milvus_server: str) -> Iterator[dict[str, str]]:
    space = milvus_space_settings(milvus_server)
    yield space
    drop_milvus_space(space)


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[tuple[str, str, Path]]:
    """(catalogue URL, password, server folder) of a real PostgreSQL from Debian's package,
    started by scripts/postgres.sh as a non-root user in a temporary folder."""
    from pipeline.procs import free_ports

    root = Path(tempfile.mkdtemp(prefix="fs-pg-", dir="/tmp"))
    root.chmod(0o755)  # the server runs as the unprivileged "postgres" user
    password = uuid.uuid4().hex
    script = str(REPO_ROOT / "scripts" / "postgres.sh")
    pg_dir = root / "pg"
    res = subprocess.run(
        ["bash", script, "start", str(pg_dir), str(free_ports(1)[0]), password],
        capture_output=True,
        text=True,
        timeout=600,
    )
    if res.returncode != 0:
        shutil.rmtree(root, ignore_errors=True)
        raise RuntimeError(f"PostgreSQL did not start: {res.stderr.strip()}")
    try:
        yield res.stdout.strip().splitlines()[-1], password, pg_dir
    finally:
        subprocess.run(["bash", script, "stop", str(pg_dir)], capture_output=True, timeout=120)
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def mosquitto() -> Iterator[LocalMosquitto]:
    """A real MQTT broker (Debian's mosquitto, started by scripts/mosquitto.sh) on a free
    loopback port, with a username and password, and a mutual-TLS listener on another; a
    test may stop and start it in place (retained messages persist)."""
    from pipeline.procs import free_ports
    from tests.support.bridge import LocalMosquitto

    root = Path(tempfile.mkdtemp(prefix="fs-mqtt-", dir="/tmp"))
    port, tls_port = free_ports(2)
    broker = LocalMosquitto(root, port, tls_port=tls_port)
    try:
        broker.start()
        yield broker
    finally:
        broker.stop()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def hook() -> Iterator[WebhookReceiver]:
    """A real HTTP receiver of the bridge's webhooks (checks every signature)."""
    from tests.support.bridge import WebhookReceiver

    receiver = WebhookReceiver(secrets.token_hex(16).encode())
    yield receiver
    receiver.close()


@pytest.fixture
def prefixes() -> tuple[str, str]:
    """A test's own MQTT topic and discovery prefixes: the broker (and its retained
    messages) outlive the test."""
    tag = uuid.uuid4().hex[:8]
    return f"fs{tag}", f"ha{tag}"


@pytest.fixture
def reader(mosquitto: LocalMosquitto, prefixes: tuple[str, str]) -> Iterator[MqttReader]:
    """Every MQTT message under the test's prefixes, as Home Assistant would read them."""
    from tests.support.bridge import MqttReader

    r = MqttReader(mosquitto, [f"{p}/#" for p in prefixes])
    yield r
    r.close()


@pytest.fixture(scope="module")
def stream_env(
    tmp_path_factory: pytest.TempPathFactory,
    model_store: ModelStore,
    ray_local: None,
    milvus_space_module: dict[str, str],
) -> Iterator[Settings]:
    """A stream test module's settings, also in the environment (its CLI calls read them):
    the session's model store, Ray and Milvus server (a corner of its own), the gallery
    in a temporary folder."""
    from tests.support.stream import stream_settings

    gallery_dir = tmp_path_factory.mktemp("gallery")
    with stream_settings(facestream_env(model_store, milvus_space_module, gallery_dir)) as s:
        yield s


@pytest.fixture
def milvus_uri(tmp_path: Path) -> Iterator[str]:
    """Path of a fresh Milvus Lite database, one per test."""
    uri = str(tmp_path / "milvus.db")
    yield uri
    # Milvus Lite serves each .db path from an in-process gRPC server that lives until
    # interpreter exit unless released; release it so tests do not pile up servers.
    from milvus_lite.server_manager import server_manager_instance

    server_manager_instance.release_server(uri)


@pytest.fixture
def milvus_client(milvus_uri: str) -> Iterator[MilvusClient]:
    """A MilvusClient on :func:`milvus_uri`, closed after the test."""
    from pymilvus import MilvusClient

    client = MilvusClient(milvus_uri)
    try:
        yield client
    finally:
        client.close()


# --- the face core: a model store built the way users build it ---


@pytest.fixture(scope="session")
def two_versions(tmp_path_factory: pytest.TempPathFactory) -> TwoVersions:
    """The session's model store, built once from the PyPI-shipped weights: the default
    version (flip TTA, active) and the same weights without TTA (another version id).
    Never written: tests that rewrite a manifest or move ACTIVE copy it
    (``tests.support.models.private_store``)."""
    return build_two_versions(tmp_path_factory.mktemp("models"))


@pytest.fixture(scope="session")
def model_store(two_versions: TwoVersions) -> ModelStore:
    """The session's store (:func:`two_versions`), its default version active."""
    return two_versions.store


@pytest.fixture(scope="session")
def embedder(model_store: ModelStore) -> Embedder:
    return model_store.load_embedder()


@pytest.fixture(scope="session")
def face_pipeline(embedder: Embedder) -> FacePipeline:
    return FacePipeline.from_config(FaceConfig(), Aligner(embedder.manifest.alignment), embedder)


@pytest.fixture(scope="session")
def lfw_dir(shared_dir: Path) -> Path:
    path = shared_dir / "data" / "lfw-dev"
    if not path.is_dir():
        pytest.skip(f"LFW-dev not found at {path}")
    return path


@pytest.fixture(scope="session")
def lfw_images(lfw_dir: Path) -> list[Path]:
    """A fixed, spread-out sample of LFW-dev images (every 40th file)."""
    return sorted(lfw_dir.rglob("*.jpg"))[::40]
