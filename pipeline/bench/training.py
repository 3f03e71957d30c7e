"""Benchmarks of the model lifecycle (they print lines; no pass/fail).

``facestream bench train``: training images/s of ``Training`` steps (the body of the Ray
worker loop) per batch size and freeze depth, on this machine.

``facestream bench reembed --faces 10000 --to VERSION``: how long
``Gallery.reembed`` takes to move N enrolled faces to another model version (read the
stored crops, embed them with the new version, insert into its collection, flip the
alias). The gallery is filled through its own catalogue, crop store and collection
with real aligned chips (from a crop cache); the face core is skipped there because
detection is not what a re-embedding does, and the first collection's vectors are
placeholders because re-embedding never reads them.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import numpy as np

from pipeline.models.store import ModelStore


def _chips_from_cache(cache_dir: Path, limit: int) -> np.ndarray:
    chips = []
    for p in sorted(cache_dir.rglob("*.npz")):
        with np.load(p, allow_pickle=False) as z:
            if z["chip"].ndim == 3:
                chips.append(z["chip"])
        if len(chips) >= limit:
            break
    if not chips:
        raise FileNotFoundError(
            f"no cached chips under {cache_dir}; run `facestream train` first (or give --crops)"
        )
    return np.stack(chips)


def bench_reembed(
    store: ModelStore, to_version: str, faces: int, cache_dir: Path, say: Callable[[str], None]
) -> None:
    from pipeline.config.face import FaceConfig
    from pipeline.config.gallery import GalleryConfig
    from pipeline.config.models import ModelsConfig
    from pipeline.gallery.blobs import encode_crop
    from pipeline.gallery.records import FaceRecord
    from pipeline.gallery.service import Gallery, crop_ref, template_digest

    src = store.active_version()
    chips = _chips_from_cache(cache_dir, min(faces, 5000))
    scratch = Path(tempfile.mkdtemp(prefix="fs-reembed-bench-"))
    try:
        models = ModelsConfig(store=store.root)
        g = Gallery.from_settings(
            # A throw-away Milvus Lite file: one process, nothing to share or start.
            GalleryConfig(data_dir=scratch, milvus_uri=str(scratch / "milvus.db")),
            FaceConfig(),
            models,
            store=store,
        )
        manifest = store.manifest(src)
        coll = g.vectors.create(src, manifest.embedding_dim)
        g.vectors.flip(coll)
        template = template_digest(manifest.alignment)
        rng = np.random.default_rng(0)
        t0 = time.perf_counter()
        per_id, batch = 4, 1000
        for start in range(0, faces, batch):
            rows = []
            with g.catalogue.transaction() as con:
                for i in range(start, min(faces, start + batch)):
                    if i % per_id == 0:
                        ident = uuid.uuid4().hex
                        g.catalogue.add_identity(con, ident, f"person {i // per_id}", None, {})
                    fid = uuid.uuid4().hex
                    png, sha = encode_crop(chips[i % len(chips)], fid)
                    rec = FaceRecord(
                        face_id=fid,
                        identity_id=ident,
                        crop=crop_ref(fid),
                        crop_sha256=sha,
                        template=template,
                        source="bench",
                        crop_mode="scene",
                        quality={},
                        enrolled_version=src,
                        created_at=time.time(),
                    )
                    g.catalogue.add_face(con, rec, png)
                    rows.append(rec.model_dump())
            vecs = rng.standard_normal((len(rows), manifest.embedding_dim)).astype(np.float32)
            vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
            g.vectors.insert(coll, src, rows, vecs)
        fill = time.perf_counter() - t0
        emb = store.load_embedder(to_version)
        sample = chips[: min(512, len(chips))]
        t0 = time.perf_counter()
        emb.embed(sample)
        per_chip = (time.perf_counter() - t0) / len(sample)
        res = g.reembed(to_version)
        g.close()
        say(f"gallery filled with {faces} faces ({faces // per_id} identities) in {fill:.1f} s")
        say(
            f"re-embed {src} -> {to_version}: {res.faces} faces in {res.seconds:.1f} s "
            f"({res.faces / res.seconds:.1f} faces/s); embedding alone "
            f"{1000 * per_chip:.1f} ms/face (tta={emb.manifest.preprocessing.tta}), "
            f"cores={os.cpu_count()}"
        )
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def bench_throughput(
    store: ModelStore,
    cache_dir: Path,
    batches: list[int],
    freezes: list[int],
    steps: int,
    loss: str,
    say: Callable[[str], None],
) -> None:
    import torch

    from pipeline.config.train import DataConfig, SamplerConfig, TrainConfig, loss_config
    from pipeline.train.loop import Training, WorkerData
    from pipeline.train.model import load_torch_model

    net, manifest = load_torch_model(store, store.active_version())
    chips = _chips_from_cache(cache_dir, max(batches))
    say(f"torch threads {torch.get_num_threads()}, cores {os.cpu_count()}, loss {loss}")
    say(f"{'batch':>6}{'freeze':>8}{'images/s':>10}{'s/step':>8}")
    for bs in batches:
        labels = np.repeat(np.arange(bs // 4), 4)
        for freeze in freezes:
            cfg = TrainConfig(
                data=DataConfig(root=Path(".")),
                loss=loss_config(loss),
                sampler=SamplerConfig(p=bs // 4, k=4),
                freeze=freeze,
                epochs=1,
                steps_per_epoch=steps,
                init_head="random",
            )
            data = WorkerData(chips[:bs], labels, bs // 4, chips[:0], labels[:0])
            tr = Training.create(cfg, net.state_dict(), manifest.preprocessing, data)
            tr.train_step(chips[:bs], labels)  # warm-up
            t0 = time.perf_counter()
            for _ in range(steps):
                tr.train_step(chips[:bs], labels)
            dt = (time.perf_counter() - t0) / steps
            say(f"{bs:>6}{freeze:>8}{bs / dt:>10.1f}{dt:>8.2f}")
