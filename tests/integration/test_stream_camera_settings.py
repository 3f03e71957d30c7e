"""Per-camera settings on the real stream (Kafka, Ray, Ray Serve, a Milvus server): three
cameras play the shared Hamilton clip at 1 fps with Lin-Manuel Miranda enrolled.

- ``plain`` (the global settings): Lin is identified.
- ``strict`` (``threshold_offset`` +0.2, ``keep_unknowns`` on while the global setting is
  off): Lin is never identified, its events report the threshold it was decided at (the
  plain camera's plus 0.2, the camera named in the provenance), and only its unknown
  faces are kept for review.
- ``far`` (``quality.min_face_px`` 10000): every face fails the quality gate, saying why.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from pipeline.config.settings import Settings
from pipeline.gallery.review import Review
from pipeline.gallery.service import Gallery
from pipeline.stream.audit import account, read_all
from pipeline.stream.runner import StreamRunner
from tests.support.stream import LIN, clip_media, stream_cfg

pytestmark = [pytest.mark.integration, pytest.mark.shared_data]

DRAIN_TIMEOUT_S = 240.0


def _cameras(clip: Path) -> list[dict[str, Any]]:
    base = {"url": str(clip), "fps": 1, "realtime": False}
    return [
        {"id": "plain", **base},
        {"id": "strict", **base, "threshold_offset": 0.2, "keep_unknowns": True},
        {"id": "far", **base, "quality": {"min_face_px": 10_000}},
    ]


def _by_camera(events: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for ev in events:
        out.setdefault(ev["camera_id"], []).append(ev)
    return out


def test_each_camera_is_recognised_with_its_own_settings(
    kafka_bootstrap: str, stream_env: Settings, shared_dir: Path
) -> None:
    assert not stream_env.gallery.review.keep_unknowns  # only the strict camera keeps them
    media = clip_media(shared_dir)
    cfg = stream_cfg(kafka_bootstrap, prefix="cam", cameras=_cameras(media["clip"]))
    runner = StreamRunner(cfg, stream_env)
    try:
        runner.start({LIN: media[LIN]})
        summary = runner.wait(duration_s=DRAIN_TIMEOUT_S, until_drained=True, tick_s=0.5)
        assert runner.drained(summary), f"not drained within {DRAIN_TIMEOUT_S}s: {summary}"
        with Gallery.from_settings(stream_env.gallery, stream_env.face, stream_env.models) as g:
            review = Review(g)
            clusters = [c.cluster_id for c in review.clusters()]
            kept_cameras = Counter(r.camera_id for r in review.store.cluster_faces(clusters))
    finally:
        runner.stop()
    acc = account(cfg)
    assert acc.ok, acc.describe()
    detections = _by_camera(read_all(kafka_bootstrap, cfg.topics.detections).json())
    identities = _by_camera(read_all(kafka_bootstrap, cfg.topics.identities).json())
    assert set(detections) == {"plain", "strict", "far"}

    def decisions(cam: str) -> Counter[str]:
        return Counter(f["decision"] for d in detections[cam] for f in d["faces"])

    # plain: the global threshold and gate; Lin is identified.
    assert decisions("plain")["identity"] >= 1
    assert {ev["identity"]["name"] for ev in identities["plain"]} == {LIN}
    plain_thr = {d["threshold"] for d in detections["plain"] if d["threshold"] is not None}
    assert len(plain_thr) == 1  # one gallery size all along
    (base,) = plain_thr
    assert all(ev["threshold"]["value"] == base for ev in identities["plain"])

    # strict: the same faces, searched, but decided at base + 0.2: nobody.
    assert decisions("strict")["unknown"] >= 1 and decisions("strict")["identity"] == 0
    assert "strict" not in identities
    searched = [d for d in detections["strict"] if d["threshold"] is not None]
    assert searched
    for d in searched:
        assert d["threshold"] == pytest.approx(base + 0.2)
        assert d["threshold_detail"]["value"] == d["threshold"]
        assert "for camera 'strict'" in d["threshold_detail"]["provenance"]
    best = max(f["similarity"] for d in searched for f in d["faces"] if f["similarity"])
    assert base <= best < base + 0.2  # Lin, who would have matched at the plain camera
    # ...and its unknown faces alone were kept (the global keep_unknowns is off).
    assert set(kept_cameras) == {"strict"}, kept_cameras

    # far: every face rejected by the camera's gate, none searched.
    faces = [f for d in detections["far"] for f in d["faces"]]
    assert faces and {f["decision"] for f in faces} == {"rejected"}
    assert all("min_face_px 10000" in " ".join(f["quality"]["reasons"]) for f in faces)
    assert all(d["threshold"] is None for d in detections["far"])
