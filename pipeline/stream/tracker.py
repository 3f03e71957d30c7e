"""Per-camera face tracks that keep an identity stable across frames.

Each frame's faces are matched to the camera's live tracks by an optimal assignment
(``scipy.optimize.linear_sum_assignment``) over a score that prefers box overlap (IoU)
and falls back on appearance: at a few frames per second a moving face may no longer
overlap its previous box, but its embedding still resembles the track's. A track's
identity is a vote over its latest decisions; it is *confirmed* once ``confirm_hits``
frames agree, and that moment (and a later change of the winner) is what the
``facestream.identities`` topic publishes, instead of one event per frame.

Tracks are keyed by capture time, not arrival: a track unseen for ``max_age_ms`` of
capture time ends. Frames of one camera arrive in order (one Kafka partition); when a
camera's sequence goes backwards (a replay after a crash or a rebalance) its tracks are
dropped and rebuilt from the replayed frames.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from pipeline.config.stream import TrackerConfig

Box = tuple[float, float, float, float]
# Appearance-only matches score below any IoU match that passed its threshold, so overlap
# wins whenever it is available.
APPEARANCE_WEIGHT = 0.25


@dataclass(frozen=True)
class Observation:
    """One face of a frame as the tracker sees it."""

    box: Box
    embedding: np.ndarray | None = None  # unit vector, None when the face was not embedded
    identity_id: str | None = None  # set when this frame's decision is 'identity'
    name: str | None = None
    external_id: str | None = None
    similarity: float | None = None
    # The model that made ``embedding``: vectors of two models live in different spaces,
    # so a track compares and averages only vectors of one version.
    model_version: str | None = None


@dataclass(frozen=True)
class Announcement:
    """The track became confirmed as someone, or changed to someone else."""

    kind: str  # "identified" | "identity_changed"
    identity_id: str
    previous_identity_id: str | None
    votes: int
    best_similarity: float


@dataclass(frozen=True)
class TrackResult:
    """What the tracker decided for one observation (same order as the input)."""

    track_id: str
    confirmed_identity: str | None
    announcement: Announcement | None
    track_started_ts_ms: int


@dataclass
class Track:
    track_id: str
    box: Box
    started_ts_ms: int
    last_ts_ms: int
    last_seq: int
    embedding: np.ndarray | None = None
    embedding_version: str | None = None  # the model version of ``embedding``
    votes: deque[tuple[str, float]] = field(default_factory=deque)
    confirmed: str | None = None
    best: dict[str, float] = field(default_factory=dict)

    def tally(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for ident, _ in self.votes:
            counts[ident] = counts.get(ident, 0) + 1
        return counts


def iou(a: Box, b: Box) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def _center_shift(a: Box, b: Box) -> float:
    """Distance between the boxes' centres, in units of the larger box's side."""
    ca = ((a[0] + a[2]) / 2, (a[1] + a[3]) / 2)
    cb = ((b[0] + b[2]) / 2, (b[1] + b[3]) / 2)
    size = max(a[2] - a[0], a[3] - a[1], b[2] - b[0], b[3] - b[1], 1.0)
    return float(np.hypot(ca[0] - cb[0], ca[1] - cb[1]) / size)


def assignment_solver() -> Callable[..., tuple[np.ndarray, np.ndarray]]:
    """``scipy.optimize.linear_sum_assignment``, imported on first use: importing
    scipy.optimize costs about 0.5 s of CPU (more on a busy machine), which every worker
    process would pay at start whether it tracks or not. A worker calls this once
    before its first poll (``RecognitionWorker``), so the import never stalls a
    camera's first frames."""
    from scipy.optimize import linear_sum_assignment

    return linear_sum_assignment


class CameraTracker:
    """The tracks of one camera."""

    def __init__(self, camera_id: str, config: TrackerConfig) -> None:
        self.camera_id = camera_id
        self.config = config
        self.tracks: list[Track] = []
        self.last_seq: int | None = None

    def reset(self) -> None:
        self.tracks = []
        self.last_seq = None

    def _score(self, track: Track, obs: Observation) -> float:
        overlap = iou(track.box, obs.box)
        if overlap >= self.config.iou_threshold:
            return overlap
        if obs.embedding is None or track.embedding is None:
            return 0.0
        if obs.model_version != track.embedding_version:
            return 0.0  # a cosine across two models' spaces means nothing
        if _center_shift(track.box, obs.box) > self.config.max_center_shift:
            return 0.0
        cos = float(track.embedding @ obs.embedding)
        if cos >= self.config.appearance_threshold:
            return APPEARANCE_WEIGHT * cos
        return 0.0

    def update(
        self, seq: int, ts_ms: int, observations: Sequence[Observation]
    ) -> list[TrackResult]:
        """Match one frame's faces to tracks, update the votes, report each face's track."""
        if self.last_seq is not None and seq <= self.last_seq:
            # A replay (another worker crashed or the group rebalanced): the tracks hold
            # the future of these frames; start over rather than mix the two.
            self.reset()
        self.last_seq = seq
        self.tracks = [t for t in self.tracks if ts_ms - t.last_ts_ms <= self.config.max_age_ms]

        assigned: dict[int, Track] = {}
        if self.tracks and observations:
            scores = np.array([[self._score(t, o) for t in self.tracks] for o in observations])
            rows, cols = assignment_solver()(scores, maximize=True)
            for r, c in zip(rows, cols, strict=True):
                if scores[r, c] > 0:
                    assigned[int(r)] = self.tracks[int(c)]

        results = []
        for i, obs in enumerate(observations):
            track = assigned.get(i)
            if track is None:
                # Deterministic: the same frames replayed give the same track ids.
                track = Track(f"{self.camera_id}:{seq}:{i}", obs.box, ts_ms, ts_ms, seq)
                self.tracks.append(track)
            results.append(self._observe(track, seq, ts_ms, obs))
        return results

    def _observe(self, track: Track, seq: int, ts_ms: int, obs: Observation) -> TrackResult:
        track.box, track.last_ts_ms, track.last_seq = obs.box, ts_ms, seq
        if obs.embedding is not None:
            if track.embedding is None or track.embedding_version != obs.model_version:
                # New, or the model changed (a live swap): start the appearance over in
                # the new model's space instead of averaging two spaces.
                track.embedding = obs.embedding.astype(np.float32)
                track.embedding_version = obs.model_version
            else:
                # Running mean of the unit vectors, renormalised: a steadier appearance
                # model than the last face alone (blur, pose).
                mixed = 0.7 * track.embedding + 0.3 * obs.embedding
                track.embedding = (mixed / max(float(np.linalg.norm(mixed)), 1e-12)).astype(
                    np.float32
                )
        announcement = None
        if obs.identity_id is not None and obs.similarity is not None:
            track.votes.append((obs.identity_id, obs.similarity))
            while len(track.votes) > self.config.vote_window:
                track.votes.popleft()
            track.best[obs.identity_id] = max(track.best.get(obs.identity_id, -1.0), obs.similarity)
            announcement = self._decide(track)
        return TrackResult(track.track_id, track.confirmed, announcement, track.started_ts_ms)

    def _decide(self, track: Track) -> Announcement | None:
        counts = track.tally()
        # Most votes wins; ties go to the higher best similarity.
        leader = max(counts, key=lambda k: (counts[k], track.best.get(k, -1.0)))
        if counts[leader] < self.config.confirm_hits or leader == track.confirmed:
            return None
        if track.confirmed is not None:
            # Switching needs a clear lead over the confirmed identity, not a tie.
            if counts[leader] <= counts.get(track.confirmed, 0):
                return None
            if not self.config.announce_changes:
                track.confirmed = leader
                return None
        previous, track.confirmed = track.confirmed, leader
        return Announcement(
            kind="identified" if previous is None else "identity_changed",
            identity_id=leader,
            previous_identity_id=previous,
            votes=counts[leader],
            best_similarity=track.best[leader],
        )


class Tracker:
    """Tracks of every camera a worker currently processes: at most
    ``config.max_cameras``, the least recently seen dropped first (camera ids are Kafka
    keys, written by any producer)."""

    def __init__(self, config: TrackerConfig) -> None:
        self.config = config
        self.cameras: OrderedDict[str, CameraTracker] = OrderedDict()
        self.evicted = 0

    def camera(self, camera_id: str) -> CameraTracker:
        tracker = self.cameras.get(camera_id)
        if tracker is None:
            tracker = self.cameras[camera_id] = CameraTracker(camera_id, self.config)
            while len(self.cameras) > self.config.max_cameras:
                self.cameras.popitem(last=False)
                self.evicted += 1
        else:
            self.cameras.move_to_end(camera_id)
        return tracker

    def update(
        self, camera_id: str, seq: int, ts_ms: int, observations: Sequence[Observation]
    ) -> list[TrackResult]:
        return self.camera(camera_id).update(seq, ts_ms, observations)

    def forget(self, camera_ids: Sequence[str]) -> None:
        """Drop cameras whose partitions moved to another worker (or must be replayed)."""
        for cam in camera_ids:
            self.cameras.pop(cam, None)
