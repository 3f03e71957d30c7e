"""A promotion cut short between the gallery alias flip and the write of ACTIVE is repaired
at the next start-up. The crash is real: a child process promotes with the real offline
swap (re-embed, alias flip on the Milvus server) and dies right after the flip."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from pipeline.config.face import FaceConfig
from pipeline.config.gallery import GalleryConfig
from pipeline.config.models import ModelsConfig
from pipeline.config.settings import Settings
from pipeline.config.stream import StreamConfig
from pipeline.gallery.service import Gallery
from pipeline.gallery.swap import reconcile
from pipeline.models.promotion import JOURNAL_FILE, history, pending_swap
from pipeline.models.store import ModelStore
from tests.support.models import TwoVersions, private_store

pytestmark = [pytest.mark.integration]

CRASHING_PROMOTE = """
import os, sys
from pathlib import Path
from pipeline.config.face import FaceConfig
from pipeline.config.gallery import GalleryConfig
from pipeline.gallery.service import Gallery
from pipeline.gallery.swap import GallerySwap
from pipeline.models.promotion import promote
from pipeline.models.store import ModelStore

cfg = GalleryConfig.model_validate_json(sys.argv[1])
store = ModelStore(Path(sys.argv[2]))
gallery = Gallery(cfg, store, FaceConfig())
real = GallerySwap(gallery)


class DiesAfterTheFlip:
    def serving(self):
        return real.serving()

    def switch(self, old, new):
        real.switch(old, new)  # re-embeds into new's collection and flips the alias
        os._exit(9)  # the process dies before ACTIVE is written


promote(store, DiesAfterTheFlip(), sys.argv[3], force=True, reason="crash test")
"""


@dataclass
class Setup:
    cfg: GalleryConfig
    store: ModelStore
    old: str
    new: str

    def gallery(self) -> Gallery:
        return Gallery(self.cfg, self.store, FaceConfig())


def _active_version(gallery: Gallery) -> str | None:
    snap = gallery.active()
    return None if snap is None else snap.version


@pytest.fixture
def setup(
    two_versions: TwoVersions, tmp_path: Path, milvus_space: dict[str, str]
) -> Iterator[Setup]:
    shared, old, new = two_versions
    # A private copy: this test moves ACTIVE, other tests share the session's store.
    store = private_store(shared, tmp_path / "models", active=old)
    cfg = GalleryConfig(data_dir=tmp_path / "gallery", **milvus_space)  # type: ignore[arg-type]  # the str settings pydantic parses
    with Gallery(cfg, store, FaceConfig()) as g:
        g.reembed(old)  # the gallery serves the old version
        assert _active_version(g) == old
    yield Setup(cfg, store, old, new)


def crash_during_promotion(s: Setup) -> None:
    res = subprocess.run(
        [sys.executable, "-c", CRASHING_PROMOTE, s.cfg.model_dump_json(), str(s.store.root), s.new],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert res.returncode == 9, res.stderr[-3000:]


def test_a_swap_cut_after_the_alias_flip_rolls_forward_at_start_up(setup: Setup) -> None:
    crash_during_promotion(setup)
    # The half-done state, for real: the alias serves the new version, ACTIVE the old.
    with setup.gallery() as g:
        assert _active_version(g) == setup.new
    assert setup.store.active_version() == setup.old
    pending = pending_swap(setup.store)
    assert pending is not None and pending.to_version == setup.new

    # Restart: the stream runner's start-up (the gallery step) reconciles them.
    from pipeline.stream.runner import StreamRunner

    settings = Settings(gallery=setup.cfg, models=ModelsConfig(store=setup.store.root))
    runner = StreamRunner(StreamConfig(), settings)
    runner._enroll({})
    assert setup.store.active_version() == setup.new
    with setup.gallery() as g:
        assert _active_version(g) == setup.new
    assert not (setup.store.root / JOURNAL_FILE).exists()
    assert any("rolled forward" in n for n in runner.notes), runner.notes
    last = history(setup.store)[-1]
    assert (last.from_version, last.to_version) == (setup.old, setup.new)
    assert "completed at start-up" in last.reason
    # Consistent now: a second start-up changes nothing.
    with setup.gallery() as g:
        assert reconcile(g) is None


def test_an_alias_moved_without_a_swap_goes_back_to_active(setup: Setup) -> None:
    with setup.gallery() as g:
        g.reembed(setup.new)  # builds new's collection and moves the alias, no promotion
        assert _active_version(g) == setup.new
    assert setup.store.active_version() == setup.old
    with setup.gallery() as g:
        done = reconcile(g)
        assert done is not None and "points at" in done
        assert _active_version(g) == setup.old
    assert setup.store.active_version() == setup.old


def test_a_swap_cut_before_the_flip_leaves_both_and_clears_the_journal(setup: Setup) -> None:
    from pipeline.models.promotion import PendingSwap, write_journal

    write_journal(setup.store, PendingSwap("promote", setup.old, setup.new, "then"))
    with setup.gallery() as g:
        assert reconcile(g) is None
        assert _active_version(g) == setup.old
    assert setup.store.active_version() == setup.old
    assert pending_swap(setup.store) is None


def test_the_journal_exists_exactly_while_a_swap_runs(setup: Setup) -> None:
    from pipeline.models.promotion import promote

    seen: list[object] = []

    class Observing:
        def serving(self) -> str:
            return setup.old

        def switch(self, old: str | None, new: str) -> dict[str, object]:
            seen.append(pending_swap(setup.store))
            return {}

    promote(setup.store, Observing(), setup.new, force=True)
    assert [getattr(p, "to_version", None) for p in seen] == [setup.new]
    assert pending_swap(setup.store) is None
    assert (
        json.loads((setup.store.root / "HISTORY.jsonl").read_text().splitlines()[-1])["to_version"]
        == setup.new
    )
