"""The review loop: the faces the stream keeps, unknown people, and feedback.

- **Kept faces** ("sightings"): the face that decided each identification event (its
  aligned crop and embedding: the event's ``crop_id``), and, opt-in
  (``gallery.review.keep_unknowns``), the first faces of every unknown track. Keyed by
  the face id ``camera:seq:index``, so a replayed frame writes nothing twice.
- **Unknown people**: each unknown track joins the cluster of the nearest kept unknown
  face of another track when their cosine is at least ``cluster_similarity`` (default:
  the model's per-comparison threshold), else starts a new cluster. The vectors live in
  their own Milvus collection per model version (``unk_<prefix>_<version>``), never in a
  gallery collection, so they are never matched as enrolled faces; clusters never mix
  versions. Labelling a cluster enrols its best crops through the normal enrolment
  checks; merge and purge are catalogue updates plus vector deletes.
- **Feedback** on an event: "not this person" records the face as a hard negative of
  that identity and, from then on, a probe whose similarity to that face is at least its
  similarity to the identity's own best face is not matched to it (applied inside every
  gallery search, ``Gallery.search_vectors``); "this is X" enrols the face into X.
- **Sightings search** ("has this face been here before?", ``sightings.py``): every kept
  face's vector is also in a collection per model version (``sig_<prefix>_<version>``,
  the gallery's ``sighting_vectors``), searched with a photo, an event's face or an
  unknown person's faces; every search is audited.
- **Retention**: kept faces older than ``retention_hours`` are erased everywhere
  (catalogue rows, crops, vectors); ``purge`` erases at once.

Write order, as for enrolment: vectors first, then the catalogue transaction; a failed
transaction deletes the vectors it added. Removal: vectors first, then rows, so a
failure leaves the rows listed and the removal can be retried.

The package: ``service.py`` (``Review``: recording, unknown people, labelling, merge,
purge, retention), ``sightings.py`` (the sightings search), ``feedback.py`` (feedback
on events and its export as training data), ``store.py`` (every SQL statement, the
tables included), ``records.py`` (what the CLI, the REST API and the web pages show)
and ``errors.py``. It lives inside the gallery
package because its data does: its tables are in the catalogue database, every gallery
search applies its "not this person" exclusions and removing a person erases their kept
faces and feedback, so the gallery reads the store's tables as the review reads the
gallery.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pipeline.gallery.review.errors import (
        ClusterNotFound,
        EventNotFound,
        FeedbackRefused,
        NameTaken,
    )
    from pipeline.gallery.review.service import Review

__all__ = ["ClusterNotFound", "EventNotFound", "FeedbackRefused", "NameTaken", "Review"]

# Resolved at first use: the stream's worker processes import ``records`` (the shape of a
# kept face) and must not pay for the service and SQLAlchemy (0.3 s in each process).
_HOMES = {"Review": "service"} | dict.fromkeys(__all__[:4], "errors")


def __getattr__(name: str) -> Any:
    if name not in _HOMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_HOMES[name]}"), name)
