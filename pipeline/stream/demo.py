"""``facestream demo``: the face core on a video, matching faces against enrolled stills.

No Kafka, Ray or Milvus: it reads a video with OpenCV, detects, aligns, quality-gates
and embeds each sampled frame's faces, and makes the open-set decision (identity or
unknown) against a small in-memory list of enrolled people. ``facestream run`` also
takes its default input (the shared clip, or an offline one) from here.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from pipeline.face.analyze import FacePipeline
from pipeline.face.errors import FaceError, NoFaceError
from pipeline.face.image_io import load_image
from pipeline.shared_data import shared_dir
from pipeline.stream.video import iter_frames

UNKNOWN = "unknown"


@dataclass
class DemoInput:
    video: str
    enroll: dict[str, Path]
    note: str


@dataclass
class DemoResult:
    frames: int = 0
    faces: int = 0
    rejected: int = 0
    decisions: Counter[str] = field(default_factory=Counter)
    best_similarity: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    first_seen_ms: dict[str, float] = field(default_factory=dict)
    reject_reasons: Counter[str] = field(default_factory=Counter)


def default_input(workdir: Path) -> DemoInput:
    """The shared Hamilton clip when present, else a clip made from a packaged photo."""
    shared = shared_dir()
    clip = shared / "data/video/short_hamilton_clip.mp4" if shared else None
    if clip is not None and clip.is_file():
        stills = clip.parent / "stills"
        return DemoInput(
            str(clip),
            {
                "Lin-Manuel Miranda": stills / "lin-manuel-miranda.png",
                "Barack Obama": stills / "obama.jpg",
                "Joe Biden": stills / "biden.jpg",
            },
            "shared Hamilton clip; Obama and Biden are enrolled as people who must not appear",
        )
    return synthetic_input(workdir)


def synthetic_input(workdir: Path) -> DemoInput:
    """A short pan-and-zoom clip over scikit-image's astronaut photo (Eileen Collins, NASA,
    public domain), for machines without the shared data. It exercises the plumbing; it
    says nothing about accuracy, since the enrolled still is the clip's own source."""
    from skimage import data

    workdir.mkdir(parents=True, exist_ok=True)
    rgb = data.astronaut()
    still = workdir / "eileen-collins.png"
    cv2.imwrite(str(still), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    video = workdir / "astronaut-clip.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter.fourcc(*"MJPG"), 10.0, (640, 360))
    bgr = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
    for i in range(40):
        zoom = 1.0 + 0.01 * i
        canvas = np.full((360, 640, 3), 40, dtype=np.uint8)
        face = cv2.resize(bgr, None, fx=0.6 * zoom, fy=0.6 * zoom)
        x = min(5 * i, 640 - face.shape[1])
        h = min(face.shape[0], 360)
        canvas[:h, x : x + face.shape[1]] = face[:h]
        writer.write(canvas)
    writer.release()
    return DemoInput(str(video), {"Eileen Collins": still}, "synthetic clip from a packaged photo")


def enroll(
    pipeline: FacePipeline, people: dict[str, Path], *, strict: bool = True
) -> tuple[list[str], np.ndarray, dict[str, str]]:
    """One embedding per person from one still (the largest face in it): (names, their
    embeddings, {name: why not} of the people left out).

    A still with no face, or that cannot be read, fails the call when ``strict``; else
    that person is left out and the others go on. Nobody usable fails it either way:
    there would be nothing to match against."""
    names, vecs, skipped = [], [], {}
    for name, path in people.items():
        try:
            faces = pipeline.analyze(load_image(path), pick="largest", gate=False)
            if not faces or faces[0].embedding is None:
                raise NoFaceError(f"no face found in {path}")
        except FaceError as exc:
            if strict:
                raise type(exc)(f"cannot enroll {name}: {exc}") from None
            skipped[name] = str(exc)
            continue
        names.append(name)
        vecs.append(faces[0].embedding)
    if not names:
        why = "; ".join(f"{n}: {r}" for n, r in skipped.items())
        raise NoFaceError(f"nobody could be enrolled ({why})")
    return names, np.stack(vecs), skipped


def run_demo(
    pipeline: FacePipeline,
    video: str,
    names: list[str],
    gallery: np.ndarray,
    threshold: float,
    *,
    fps: float = 5.0,
    on_frame: Callable[[int, list[tuple[str, float]]], None] | None = None,
) -> DemoResult:
    """Process the video; each face is an identity when its best similarity >= threshold."""
    result = DemoResult()
    for frame in iter_frames(video, target_fps=fps, max_side=1280):
        result.frames += 1
        decided: list[tuple[str, float]] = []
        try:
            faces = pipeline.analyze(frame.image)
        except FaceError as exc:  # a bad frame is counted, never fatal
            result.reject_reasons[str(exc)] += 1
            faces = []
        for face in faces:
            result.faces += 1
            if face.embedding is None:
                result.rejected += 1
                result.reject_reasons.update(r.split(":")[0] for r in face.quality.reasons)
                continue
            sims = gallery @ face.embedding
            best = int(np.argmax(sims))
            label = names[best] if sims[best] >= threshold else UNKNOWN
            result.decisions[label] += 1
            result.best_similarity[label] = max(result.best_similarity[label], float(sims[best]))
            result.first_seen_ms.setdefault(label, frame.ts_ms)
            decided.append((label, float(sims[best])))
        if on_frame:
            on_frame(frame.seq, decided)
    return result
