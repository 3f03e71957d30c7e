"""Milvus Lite search latency at gallery sizes, per index type: the basis of the index choice.

Run it in any environment that has pymilvus and numpy; it imports nothing else from
facestream, so the same file measures other Milvus Lite releases from a throwaway venv::

    python -m pipeline.gallery.bench --rows 10000,100000
    /tmp/ml25/bin/python pipeline/gallery/bench.py --rows 10000,100000   # milvus-lite 2.5.x

The vectors imitate a face gallery, not uniform noise: unit vectors in ``dim``
dimensions drawn around one centre per identity (4 faces each), and the probes are new
draws around enrolled centres. Uniform random vectors are the worst case for
approximate indexes and would understate their recall on faces.

Reported per (rows, index): insert and index-build seconds, single-probe latency p50
and p99 (top-10, one query per call, as an identification request makes), batched
latency per probe (32 probes per call, as a stream worker makes) and recall@10
against exact numpy search.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

FACES_PER_IDENTITY = 4
TOP_K = 10
INSERT_BATCH = 5_000


@dataclass
class Row:
    rows: int
    index: str
    insert_s: float
    build_s: float
    p50_ms: float
    p99_ms: float
    batched_ms: float
    recall: float


def face_like(
    n: int, dim: int, rng: np.random.Generator, spread: float = 0.6
) -> tuple[np.ndarray, np.ndarray]:
    """``n`` unit vectors around n / FACES_PER_IDENTITY centres, and the centres."""
    centres = rng.standard_normal((max(1, n // FACES_PER_IDENTITY), dim)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    owner = np.arange(n) % len(centres)
    v = centres[owner] + spread * rng.standard_normal((n, dim)).astype(np.float32) / np.sqrt(dim)
    return (v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float32), centres


def _index_params(client: Any, index: str, rows: int) -> Any:
    params = client.prepare_index_params()
    extra: dict[str, Any] = {}
    if index == "IVF_FLAT":
        extra = {"nlist": int(max(16, min(1024, 4 * np.sqrt(rows))))}
    elif index == "HNSW":
        extra = {"M": 16, "efConstruction": 200}
    params.add_index("embedding", index_type=index, metric_type="COSINE", params=extra)
    return params


def _search_params(index: str, rows: int) -> dict[str, Any]:
    if index == "IVF_FLAT":
        nlist = int(max(16, min(1024, 4 * np.sqrt(rows))))
        return {"params": {"nprobe": max(16, nlist // 8)}}
    if index == "HNSW":
        return {"params": {"ef": 64}}
    return {}


def bench_one(uri: str, rows: int, dim: int, index: str, n_queries: int, seed: int = 7) -> Row:
    from pymilvus import DataType, MilvusClient

    rng = np.random.default_rng(seed)
    data, centres = face_like(rows, dim, rng)
    probes = centres[rng.integers(0, len(centres), n_queries)]
    probes = probes + 0.6 * rng.standard_normal(probes.shape).astype(np.float32) / np.sqrt(dim)
    probes = (probes / np.linalg.norm(probes, axis=1, keepdims=True)).astype(np.float32)
    exact = np.argsort(-(probes @ data.T), axis=1)[:, :TOP_K]

    client = MilvusClient(uri)
    name = f"bench_{index.lower()}_{rows}"
    if client.has_collection(name):
        client.drop_collection(name)
    schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
    schema.add_field("face_id", DataType.INT64, is_primary=True)
    schema.add_field("identity_id", DataType.VARCHAR, max_length=64)
    schema.add_field("embedding", DataType.FLOAT_VECTOR, dim=dim)
    client.create_collection(name, schema=schema, index_params=_index_params(client, index, rows))

    t0 = time.perf_counter()
    for i in range(0, rows, INSERT_BATCH):
        chunk = data[i : i + INSERT_BATCH]
        client.insert(
            name,
            [
                {"face_id": i + j, "identity_id": f"p{(i + j) % len(centres)}", "embedding": v}
                for j, v in enumerate(chunk.tolist())
            ],
        )
    insert_s = time.perf_counter() - t0
    # Seal the segments and (re)load so the search below runs on the built index, not on
    # the brute-force scan of a growing segment.
    t0 = time.perf_counter()
    if hasattr(client, "flush"):
        client.flush(name)
    client.release_collection(name)
    for attempt in range(10):
        try:
            client.load_collection(name)
            break
        except Exception:
            # Milvus Lite 3.2.2 can read a FLAT index file that its flush is still writing
            # ("file seems not fully written"); it loads once the write has finished.
            if attempt == 9:
                raise
            time.sleep(1.0)
    client.search(name, data=[probes[0].tolist()], limit=TOP_K, anns_field="embedding")
    build_s = time.perf_counter() - t0

    sp = _search_params(index, rows)
    lat = []
    found = []
    for q in probes:
        t0 = time.perf_counter()
        hits = client.search(
            name,
            data=[q.tolist()],
            limit=TOP_K,
            anns_field="embedding",
            search_params=sp,
            output_fields=["identity_id"],
        )[0]
        lat.append(time.perf_counter() - t0)
        found.append([h["id"] if "id" in h else h["face_id"] for h in hits])
    recall = float(
        np.mean([len(set(f) & set(e.tolist())) / TOP_K for f, e in zip(found, exact, strict=True)])
    )
    batch = 32
    t0 = time.perf_counter()
    n_batched = 0
    for i in range(0, len(probes), batch):
        chunk = probes[i : i + batch]
        client.search(
            name, data=chunk.tolist(), limit=TOP_K, anns_field="embedding", search_params=sp
        )
        n_batched += len(chunk)
    batched_ms = 1000 * (time.perf_counter() - t0) / n_batched
    client.drop_collection(name)
    client.close()
    ms = 1000 * np.asarray(lat)
    return Row(
        rows,
        index,
        insert_s,
        build_s,
        float(np.percentile(ms, 50)),
        float(np.percentile(ms, 99)),
        batched_ms,
        recall,
    )


def print_table(results: list[Row], title: str) -> None:
    print(title)
    head = (
        f"{'rows':>8} {'index':<9} {'insert s':>9} {'build s':>8} {'p50 ms':>8} "
        f"{'p99 ms':>8} {'ms/probe@32':>12} {'recall@10':>10}"
    )
    print(head)
    print("-" * len(head))
    for r in results:
        print(
            f"{r.rows:>8} {r.index:<9} {r.insert_s:>9.1f} {r.build_s:>8.1f} {r.p50_ms:>8.2f} "
            f"{r.p99_ms:>8.2f} {r.batched_ms:>12.2f} {r.recall:>10.3f}"
        )


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", default="10000,100000", help="comma-separated gallery sizes")
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--indexes", default="FLAT,IVF_FLAT,HNSW", help="comma-separated")
    ap.add_argument("--queries", type=int, default=200, help="probes per configuration")
    ap.add_argument("--dir", type=Path, default=None, help="scratch folder (default: a temp dir)")
    args = ap.parse_args(argv)

    scratch = Path(args.dir or tempfile.mkdtemp(prefix="fs-milvus-bench-"))
    scratch.mkdir(parents=True, exist_ok=True)
    versions = {}
    for pkg in ("milvus-lite", "pymilvus"):
        try:
            versions[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            versions[pkg] = "?"
    results = []
    try:
        for rows in (int(r) for r in args.rows.split(",")):
            for index in args.indexes.split(","):
                uri = str(scratch / f"bench-{index.lower()}-{rows}.db")
                try:
                    results.append(bench_one(uri, rows, args.dim, index, args.queries))
                except Exception as exc:  # report a refused index as a row, keep measuring
                    print(f"{rows} {index}: refused or failed: {type(exc).__name__}: {exc}")
                print_table(results[-1:], f"[{rows} x {index} done]") if results else None
    finally:
        if args.dir is None:
            shutil.rmtree(scratch, ignore_errors=True)
    print()
    print_table(
        results,
        f"Milvus Lite {versions['milvus-lite']} (pymilvus {versions['pymilvus']}), "
        f"dim {args.dim}, COSINE, top-{TOP_K}, {args.queries} probes",
    )


if __name__ == "__main__":
    main()
