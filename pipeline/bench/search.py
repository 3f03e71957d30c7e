"""Gallery search speed and recall: the local Milvus server against Milvus Lite, per index.

``facestream bench search`` runs it; the results and the index choice they led to are in
``pipeline/gallery/INDEX.md``. Nothing heavy is imported at module level (the CLI
imports this lazily, and pymilvus takes a second to import).

The vectors imitate a face gallery (``pipeline.bench.synthetic``), not uniform noise.

The collection has the schema of ``VectorStore.create`` (string ids, the quality and
crop columns, Session consistency), and the timed searches are the call the gallery
makes: ``(top_k + 2) * FACES_PER_PERSON_FETCHED`` faces with its output fields, from
which it keeps each person's best face (the server ignores ``group_by_field``).
Reported per (store, index variant):

- insert seconds and index seconds (flush, index build, load) at ``rows`` faces;
- single-probe latency p50 / p99 (one probe per call, as an identification request);
- batch latency: ms per call of 64 probes (as a stream worker searches);
- recall@1 (top face vs exact numpy search) and recall@10 (plain top-10 faces);
- whether the store honoured ``group_by_field`` (no identity twice in one result).

Timings are medians over ``repeats`` passes, since the machine may be shared.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import json
import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from pipeline.bench.synthetic import DIM, SyntheticGallery, make_gallery
from pipeline.gallery.index import (
    BUILD_PARAMS,
    SEARCH_KEYS,
    SEARCH_PARAMS,
    VECTOR_FIELD,
    index_params,
    search_params,
)
from pipeline.gallery.vectors import FACES_PER_PERSON_FETCHED, MAX_TOPK
from pipeline.procs import free_ports

if TYPE_CHECKING:
    from pymilvus import MilvusClient

INSERT_BATCH = 5_000
BATCH_PROBES = 64
INDEX_WAIT_S = 900.0
OUTPUT_FIELDS = ["face_id", "identity_id", "model_version"]  # as VectorStore.search
MODEL_VERSION = "bench"

SERVER = "server"
LITE = "lite"

# (description, rows done, rows total): the CLI draws it as a progress bar.
Progress = Callable[[str, int, int], None]


@dataclass(frozen=True)
class Variant:
    """An index type with parameters overriding index.py's (build and search)."""

    index_type: str
    build: dict[str, int] = field(default_factory=dict)
    search: dict[str, int] = field(default_factory=dict)

    @classmethod
    def parse(cls, spec: str) -> Variant:
        """``TYPE`` or ``TYPE:key=value,...``, e.g. ``HNSW:M=32,efConstruction=200,ef=64``;
        ``ef`` and ``nprobe`` are search parameters, the others build parameters."""
        index_type, _, rest = spec.partition(":")
        build: dict[str, int] = {}
        search: dict[str, int] = {}
        for item in filter(None, (p.strip() for p in rest.split(","))):
            key, sep, value = item.partition("=")
            if not sep:
                raise ValueError(f"index variant {spec!r}: expected key=value, got {item!r}")
            (search if key in SEARCH_KEYS else build)[key] = int(value)
        return cls(index_type.strip().upper(), build, search)

    @property
    def build_params(self) -> dict[str, int]:
        return {**BUILD_PARAMS.get(self.index_type, {}), **self.build}

    @property
    def search_params(self) -> dict[str, int]:
        return {**SEARCH_PARAMS.get(self.index_type, {}), **self.search}

    @property
    def params(self) -> str:
        merged = {**self.build_params, **self.search_params}
        return " ".join(f"{k}={v}" for k, v in merged.items()) or "-"

    @property
    def label(self) -> str:
        return f"{self.index_type} {self.params}" if self.params != "-" else self.index_type

    def build_key(self) -> tuple[str, tuple[tuple[str, int], ...]]:
        # Variants that differ only in search parameters share one collection.
        return self.index_type, tuple(sorted(self.build_params.items()))


DEFAULT_VARIANTS = (Variant("FLAT"), Variant("IVF_FLAT"), Variant("HNSW"))


@dataclass
class Result:
    store: str  # SERVER or LITE
    store_version: str
    index_type: str
    params: str
    rows: int
    insert_s: float = float("nan")
    index_s: float = float("nan")  # flush + index build + load
    p50_ms: float = float("nan")
    p99_ms: float = float("nan")
    batch_ms: float = float("nan")  # per call of BATCH_PROBES probes
    recall_at_1: float = float("nan")
    recall_at_10: float = float("nan")
    group_by: bool | None = None  # None: could not tell (top_k 1) or not measured
    consistency: str = "Session"
    error: str | None = None

    @property
    def label(self) -> str:
        return f"{self.index_type} {self.params}" if self.params != "-" else self.index_type

    @property
    def build_s(self) -> float:
        return self.insert_s + self.index_s


def _face_id(hit: Any) -> str:
    # The server names the primary key "id" in a hit, Milvus Lite by its field name.
    for key in ("id", "face_id"):
        with contextlib.suppress(KeyError):
            return str(hit[key])
    return str(hit["entity"]["face_id"])


def _face_index(face_id: str) -> int:
    return int(face_id[1:])


# -- one store -----------------------------------------------------------------------------


def _create(client: MilvusClient, name: str, variant: Variant, dim: int) -> None:
    from pymilvus import DataType, MilvusClient

    if client.has_collection(name):
        client.drop_collection(name)
    # The schema of VectorStore.create, so rows weigh what gallery rows weigh.
    schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
    schema.add_field("face_id", DataType.VARCHAR, is_primary=True, max_length=64)
    schema.add_field("identity_id", DataType.VARCHAR, max_length=64)
    schema.add_field("model_version", DataType.VARCHAR, max_length=128)
    schema.add_field("quality", DataType.VARCHAR, max_length=1024)
    schema.add_field("crop", DataType.VARCHAR, max_length=512)
    schema.add_field(VECTOR_FIELD, DataType.FLOAT_VECTOR, dim=dim)
    client.create_collection(
        name,
        schema=schema,
        index_params=index_params(client, variant.index_type, variant.build),
        consistency_level="Session",  # the gallery's (vectors.py)
    )


def _insert(
    client: MilvusClient, name: str, gallery: SyntheticGallery, progress: Progress, what: str
) -> None:
    rows = len(gallery.vectors)
    progress(what, 0, rows)
    for i in range(0, rows, INSERT_BATCH):
        chunk = gallery.vectors[i : i + INSERT_BATCH].tolist()
        client.insert(
            name,
            [
                {
                    "face_id": f"f{i + j}",
                    "identity_id": f"p{gallery.identity[i + j]}",
                    "model_version": MODEL_VERSION,
                    "quality": '{"score": 0.9, "sharpness": 120.0, "pose": 0.1}',
                    "crop": f"crops/{MODEL_VERSION}/f{i + j}.jpg",
                    VECTOR_FIELD: vec,
                }
                for j, vec in enumerate(chunk)
            ],
        )
        progress(what, min(rows, i + INSERT_BATCH), rows)


def _wait_indexed(client: MilvusClient, name: str) -> None:
    """Flush, wait until every row is in the built index, then (re)load the collection
    so searches run on the index and not on a brute-force scan of growing segments."""
    from pymilvus.exceptions import MilvusException

    client.flush(name)
    deadline = time.monotonic() + INDEX_WAIT_S
    while time.monotonic() < deadline:
        desc = client.describe_index(name, VECTOR_FIELD)
        # "state" says Finished before the sealed segments are indexed (server 2.3.5):
        # count the rows instead.
        total, done = desc.get("total_rows"), desc.get("indexed_rows")
        if total is None or done is None or (done >= total and not desc.get("pending_index_rows")):
            break
        time.sleep(0.5)
    else:
        raise TimeoutError(f"index of {name} not built after {INDEX_WAIT_S:.0f} s")
    client.release_collection(name)
    for attempt in range(10):
        try:
            client.load_collection(name)
            return
        except MilvusException as exc:
            # Milvus Lite 3.2.2 can read an index file its flush is still writing ("file
            # seems not fully written"); it loads once the write has finished.
            if "not fully written" not in str(exc) or attempt == 9:
                raise
            time.sleep(0.5 * (attempt + 1))


def _measure(
    client: MilvusClient,
    name: str,
    variant: Variant,
    gallery: SyntheticGallery,
    top_k: int,
    repeats: int,
    result: Result,
) -> None:
    # The search's consistency level: Session is the gallery's; Strong makes the server
    # wait for its time tick before every search (what that wait costs).
    level: dict[str, Any] = (
        {} if result.consistency == "Session" else {"consistency_level": result.consistency}
    )

    def search(vectors: np.ndarray, limit: int, grouped: bool = True) -> list[Any]:
        extra: dict[str, Any] = {"group_by_field": "identity_id"} if grouped else {}
        return client.search(
            name,
            data=vectors.tolist(),
            limit=limit,
            anns_field=VECTOR_FIELD,
            search_params=search_params(variant.index_type, variant.search, limit=limit),
            output_fields=OUTPUT_FIELDS,
            **extra,
            **level,
        )

    # The gallery's call: it fetches several faces per person wanted and keeps each
    # person's best itself (the server ignores group_by), so time that limit.
    fetch = min((top_k + 2) * FACES_PER_PERSON_FETCHED, MAX_TOPK)
    probes = gallery.probes
    for q in probes[:5]:  # warm caches and connections before timing
        search(q[None], fetch, grouped=False)
    p50s, p99s, batch_ms = [], [], []
    first: list[Any] = []
    for rep in range(repeats):
        lat = []
        for q in probes:
            t0 = time.perf_counter()
            hits = search(q[None], fetch, grouped=False)[0]
            lat.append(time.perf_counter() - t0)
            if rep == 0:
                first.append(hits)
        ms = 1000 * np.asarray(lat)
        p50s.append(float(np.percentile(ms, 50)))
        p99s.append(float(np.percentile(ms, 99)))
        n = max(1, len(probes) // BATCH_PROBES)
        calls = []
        for i in range(n):
            chunk = probes[i * BATCH_PROBES : (i + 1) * BATCH_PROBES]
            t0 = time.perf_counter()
            search(chunk, fetch, grouped=False)
            calls.append(1000 * (time.perf_counter() - t0))
        batch_ms.append(statistics.median(calls))
    result.p50_ms = statistics.median(p50s)
    result.p99_ms = statistics.median(p99s)
    result.batch_ms = statistics.median(batch_ms)

    top1 = [_face_index(_face_id(h[0])) if len(h) else -1 for h in first]
    result.recall_at_1 = float(np.mean(np.asarray(top1) == gallery.exact[:, 0]))
    if top_k > 1:
        # Face-like data puts several faces of the probe's person in its top k: a store
        # that ignores group_by returns some identity twice.
        grouped = [search(q[None], top_k)[0] for q in probes[:50]]
        result.group_by = all(
            len({h["entity"]["identity_id"] for h in hits}) == len(hits) for hits in grouped
        )
    k = gallery.exact.shape[1]
    found = []
    for i in range(0, len(probes), BATCH_PROBES):
        for hits in search(probes[i : i + BATCH_PROBES], k, grouped=False):
            found.append({_face_index(_face_id(h)) for h in hits})
    result.recall_at_10 = float(
        np.mean([len(f & set(e.tolist())) / k for f, e in zip(found, gallery.exact, strict=True)])
    )


def bench_store(
    client: MilvusClient,
    store: str,
    gallery: SyntheticGallery,
    variants: Sequence[Variant],
    *,
    top_k: int,
    repeats: int,
    progress: Progress,
    consistency: str = "Session",
) -> list[Result]:
    """Every variant on one store: one collection per set of build parameters."""
    version = str(client.get_server_version())
    rows = len(gallery.vectors)
    groups: dict[Any, list[Variant]] = {}
    for v in variants:
        groups.setdefault(v.build_key(), []).append(v)
    results: list[Result] = []
    for n, group in enumerate(groups.values()):
        name = f"bench_search_{n}"
        first = group[0]
        made = [
            Result(store, version, v.index_type, v.params, rows, consistency=consistency)
            for v in group
        ]
        results.extend(made)
        try:
            _create(client, name, first, gallery.vectors.shape[1])
            t0 = time.perf_counter()
            build = " ".join(f"{k}={v}" for k, v in first.build_params.items())
            _insert(client, name, gallery, progress, f"{store}: {first.index_type} {build}")
            insert_s = time.perf_counter() - t0
            progress(f"{store}: {first.index_type} {build} (building the index)", rows, rows)
            t0 = time.perf_counter()
            _wait_indexed(client, name)
            index_s = time.perf_counter() - t0
        except Exception as exc:  # a refused index is a row of the table, not the end
            for r in made:
                r.error = f"{type(exc).__name__}: {exc}"
            with contextlib.suppress(Exception):
                client.drop_collection(name)
            continue
        for v, r in zip(group, made, strict=True):
            r.insert_s, r.index_s = insert_s, index_s
            progress(f"{store}: searching {v.label}", rows, rows)
            try:
                _measure(client, name, v, gallery, top_k, repeats, r)
            except Exception as exc:
                r.error = f"{type(exc).__name__}: {exc}"
        client.drop_collection(name)
    return results


# -- the two stores ------------------------------------------------------------------------


@contextlib.contextmanager
def server_client(root: Path, log: Callable[[str], None] | None = None) -> Iterator[MilvusClient]:
    """A throwaway local Milvus server (the gallery's default store) in ``root``."""
    from pymilvus import MilvusClient

    from pipeline.gallery.milvus_server import LocalMilvus

    # A free port of its own, never the gallery's: the bench must not touch real data.
    srv = LocalMilvus(root / "milvus", free_ports(1)[0])
    try:
        client = MilvusClient(srv.attach(log=log))
        try:
            yield client
        finally:
            client.close()
    finally:
        srv.release()


@contextlib.contextmanager
def lite_client(root: Path) -> Iterator[MilvusClient]:
    from milvus_lite.server_manager import server_manager_instance
    from pymilvus import MilvusClient

    path = str(root / "lite.db")
    client = MilvusClient(path)
    try:
        yield client
    finally:
        client.close()
        # Milvus Lite runs an in-process server per file until released.
        server_manager_instance.release_server(path)


def run(
    scratch: Path,
    *,
    rows: int,
    probes: int,
    top_k: int,
    variants: Sequence[Variant] = DEFAULT_VARIANTS,
    server: bool = True,
    lite: bool = True,
    repeats: int = 3,
    consistency: str = "Session",
    progress: Progress | None = None,
    log: Callable[[str], None] | None = None,
) -> list[Result]:
    """The server's results, then Milvus Lite's, for the same gallery and probes."""
    report = progress or (lambda what, done, total: None)
    gallery = make_gallery(rows, probes)
    results: list[Result] = []
    stores: list[tuple[str, Callable[[], contextlib.AbstractContextManager[MilvusClient]]]] = []
    if server:
        stores.append((SERVER, lambda: server_client(scratch / "server", log)))
    if lite:
        stores.append((LITE, lambda: lite_client(scratch / "lite")))
    for store, opener in stores:
        (scratch / store).mkdir(parents=True, exist_ok=True)
        with opener() as client:
            results += bench_store(
                client,
                store,
                gallery,
                variants,
                top_k=top_k,
                repeats=repeats,
                progress=report,
                consistency=consistency,
            )
    return results


def lite_of(results: Sequence[Result]) -> dict[str, Result]:
    """Milvus Lite's result per variant label: the denominators of the ratio columns."""
    return {r.label: r for r in results if r.store == LITE and r.error is None}


def versions() -> dict[str, str]:
    out = {}
    for pkg in ("milvus", "milvus-lite", "pymilvus"):
        try:
            out[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            out[pkg] = "?"
    return out


def write_json(
    path: Path, results: Sequence[Result], *, rows: int, probes: int, top_k: int, repeats: int
) -> None:
    doc = {
        "rows": rows,
        "probes": probes,
        "top_k": top_k,
        "repeats": repeats,
        "batch_probes": BATCH_PROBES,
        "dim": DIM,
        "versions": versions(),
        "results": [{**asdict(r), "label": r.label, "build_s": r.build_s} for r in results],
    }
    path.write_text(json.dumps(_no_nan(doc), indent=2) + "\n")


def _no_nan(value: Any) -> Any:
    # NaN is not JSON: an unmeasured value is written as null.
    if isinstance(value, float) and value != value:
        return None
    if isinstance(value, dict):
        return {k: _no_nan(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_no_nan(v) for v in value]
    return value
