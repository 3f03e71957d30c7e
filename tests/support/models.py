"""The tests' model store: the default model in two versions, built once per session by
the ``two_versions`` fixture (tests/conftest.py; ``model_store`` is the same store).

The same weights with and without flip test-time augmentation have different version
ids, so they are really two embedding spaces: what swaps, re-embeds and cross-version
refusals need. No test writes the session's store: one that rewrites a manifest or
moves ACTIVE works on a :func:`private_store` copy.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import NamedTuple

from pipeline.models.store import ModelStore

PLAIN_TTA, FLIP_TTA = "none", "flip"


class TwoVersions(NamedTuple):
    store: ModelStore
    flip: str  # the default version (flip TTA), active
    plain: str  # the same weights without TTA


def build_two_versions(root: Path) -> TwoVersions:
    from pipeline.models.bootstrap import bootstrap_default

    store = ModelStore(root)
    plain = bootstrap_default(store, tta=PLAIN_TTA, activate=False).version
    flip = bootstrap_default(store, tta=FLIP_TTA, activate=True).version
    assert plain != flip
    return TwoVersions(store, flip, plain)


def private_store(
    src: ModelStore, dest: Path, *versions: str, active: str | None = None
) -> ModelStore:
    """A copy of ``versions`` of ``src`` (all of them when none is named) in ``dest``,
    with ``active`` (default: the first named, else ``src``'s) active."""
    store = ModelStore(dest)
    for version in versions or tuple(src.versions()):
        shutil.copytree(src.folder(version), store.folder(version))
    store.set_active(active or (versions[0] if versions else src.active_version()))
    return store
