"""Feedback on identification events, and its export as training data.

- "not this person": the event's face is kept as a hard negative of the identity it
  named, with its embedding; from then on every gallery search turns a match to that
  identity into "unknown" when the probe is at least as similar to that face as to the
  identity's own best face (``store.exclusion_vectors``, applied by the gallery).
- "this is X": the face's crop is enrolled into X (a new person when nobody is called
  X) through the normal enrolment checks.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline.files import private_dir, private_umask, write_private
from pipeline.gallery.errors import GalleryError, ModelVersionMismatch
from pipeline.gallery.review.errors import FeedbackRefused, NameTaken
from pipeline.gallery.review.records import FeedbackKind, FeedbackResult, Sighting

if TYPE_CHECKING:
    from pipeline.gallery.review.service import Review


def give(
    review: Review,
    event_id: str,
    kind: FeedbackKind,
    *,
    identity_id: str | None = None,
    name: str | None = None,
) -> FeedbackResult:
    """``Review.feedback``: refused (changing nothing) for an unknown event, a kind
    that is neither, or an event made by another model version than the gallery serves."""
    if kind not in ("not_this_person", "this_is"):
        raise GalleryError(f"feedback kind must be not_this_person or this_is, got {kind!r}")
    event = review.sighting(event_id)
    serving = review.gallery.serving_version()
    if event.model_version != serving:
        raise ModelVersionMismatch(
            f"event {event_id} was made by model {event.model_version}; the gallery now "
            f"serves {serving}, and faces of two models are never compared"
        )
    if kind == "not_this_person":
        return _not_this_person(review, event)
    return _this_is(review, event, identity_id, name)


def _store(review: Review, event: Sighting, kind: FeedbackKind, identity_id: str) -> str:
    fid = uuid.uuid4().hex
    # An exclusion keeps the face's embedding: every search compares probes with it.
    embedding = review.embedding(event.face_id) if kind == "not_this_person" else None
    review.store.add_feedback(
        fid,
        event.model_dump(),
        kind,
        identity_id,
        crop=review.crop_jpeg(event.face_id),
        embedding=embedding,
    )
    return fid


def _not_this_person(review: Review, event: Sighting) -> FeedbackResult:
    if event.decision != "identity" or event.identity_id is None:
        raise FeedbackRefused(
            f"event {event.event_id} named nobody: 'not this person' needs an event "
            "that identified someone (use 'this is' to name an unknown face)"
        )
    ident = review.catalogue.get(event.identity_id)
    prior = next(
        (f for f in event.feedback if f.kind == "not_this_person"
         and f.identity_id == ident.identity_id),
        None,
    )
    fid = prior.feedback_id if prior else _store(
        review, event, "not_this_person", ident.identity_id
    )
    return FeedbackResult(
        feedback_id=fid,
        event_id=event.event_id,
        kind="not_this_person",
        identity=ident,
        effect=f"this face, and faces closer to it than to {ident.name}'s enrolled "
        f"faces, no longer match {ident.name}; kept as a hard negative of "
        f"{ident.identity_id}",
    )


def _this_is(
    review: Review, event: Sighting, identity_id: str | None, name: str | None
) -> FeedbackResult:
    if (identity_id is None) == (name is None or not name.strip()):
        raise GalleryError("'this is' needs an identity_id or a name (one of them)")
    new_name = None
    if identity_id is None:
        assert name is not None
        taken = review.catalogue.find_by_name(name)
        if len(taken) > 1:
            ids = ", ".join(i.identity_id for i in taken)
            raise NameTaken(f"{len(taken)} identities are named {name!r} ({ids}): give one id")
        if taken:
            identity_id = taken[0].identity_id
        else:
            new_name = name.strip()
    else:
        review.catalogue.get(identity_id)
    res = review.gallery.enroll(
        [(f"event {event.event_id}", review.crop_jpeg(event.face_id))],
        name=new_name,
        identity_id=identity_id,
        crop_mode="tight",
    )
    ident = res.identity
    fid = _store(review, event, "this_is", ident.identity_id)
    return FeedbackResult(
        feedback_id=fid,
        event_id=event.event_id,
        kind="this_is",
        identity=ident,
        effect=f"the face was enrolled into {ident.name} ({ident.identity_id})",
        enrolled_faces=res.added_faces,
    )


def export(review: Review, out_dir: Path) -> dict[str, int]:
    """Write the feedback as training data (pipeline/train/README.md, "Feedback"):

    - ``corrections/<identity_id>/<feedback_id>.jpg``: faces people said are that
      identity, and ``enrolled/<identity_id>/<face_id>.png``: the enrolled crops of
      every identity with feedback;
    - ``manifest.jsonl``: both, as ``{path, identity}`` rows: a ``[data]`` or
      ``[replay]`` manifest of ``facestream train``;
    - ``negatives/<identity_id>/<feedback_id>.jpg`` and ``negatives.jsonl``
      (``{path, not_identity}``): faces people said are NOT that identity;
    - ``feedback.jsonl``: every feedback row.

    Returns counts per kind."""
    counts = {"this_is": 0, "not_this_person": 0, "enrolled": 0}
    private_dir(out_dir)  # face crops: owner-only
    folder = {"this_is": "corrections", "not_this_person": "negatives"}
    people: set[str] = set()

    def put(rel: Path, data: bytes) -> str:
        private_dir((out_dir / rel).parent)
        write_private(out_dir / rel, data)
        return rel.as_posix()

    def line(file: Any, row: dict[str, Any]) -> None:
        file.write(json.dumps(row) + "\n")

    with (
        private_umask(),  # the index files below
        review.store.each_feedback() as rows,
        (out_dir / "feedback.jsonl").open("w") as index,
        (out_dir / "manifest.jsonl").open("w") as manifest,
        (out_dir / "negatives.jsonl").open("w") as negatives,
    ):
        for m in rows:
            ident = m["identity_id"]
            rel = Path(folder[m["kind"]]) / ident / f"{m['feedback_id']}.jpg"
            path = put(rel, bytes(m["crop"]))
            line(index, {**{k: m[k] for k in m if k != "crop"}, "path": path})
            if m["kind"] == "this_is":
                line(manifest, {"path": path, "identity": ident})
            else:
                line(negatives, {"path": path, "not_identity": ident})
            people.add(ident)
            counts[m["kind"]] += 1
        for ident in sorted(people):
            for face in review.catalogue.faces(ident):
                rel = Path("enrolled") / ident / f"{face.face_id}.png"
                path = put(rel, review.catalogue.crop_png(face.face_id))
                line(manifest, {"path": path, "identity": ident})
                counts["enrolled"] += 1
    return counts

