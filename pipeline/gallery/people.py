"""Enrolment of named people from one photo each (``facestream run --enroll NAME=IMAGE``)."""

from __future__ import annotations

from pathlib import Path

from pipeline.gallery.service import Gallery


def enroll_people(gallery: Gallery, people: dict[str, Path]) -> list[str]:
    """Enrol each NAME=IMAGE (its largest face) unless an identity of that name exists;
    one line per person saying what happened."""
    lines = []
    for name, path in people.items():
        existing = [i for i in gallery.list(limit=100, name_contains=name) if i.name == name]
        if existing:
            lines.append(f"{name}: already enrolled as {existing[0].identity_id}")
            continue
        # Like `facestream demo`: the largest face of the photo (a still from a scene may
        # show others in the background).
        res = gallery.enroll([(path.name, path.read_bytes())], name=name, pick="largest")
        lines.append(f"{name}: enrolled as {res.identity.identity_id} ({res.model_version})")
    return lines
