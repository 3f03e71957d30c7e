"""Local data is owner-only (issue 17): the gallery's catalogue, the local Milvus server's
data, logs and state, the model store and exports of face crops hold faces or what
identifies them, so nothing facestream creates is readable by other users."""

from __future__ import annotations

import io
import stat
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline.config.face import FaceConfig
from pipeline.config.gallery import GalleryConfig
from pipeline.config.models import ModelsConfig
from pipeline.gallery.service import Gallery
from pipeline.models.store import ModelStore
from pipeline.procs import free_ports

pytestmark = pytest.mark.integration


def readable_by_others(root: Path) -> list[str]:
    """Every file and folder under ``root`` (itself included) with group or other bits."""
    out = []
    for p in [root, *root.rglob("*")]:
        st = p.lstat()
        if stat.S_ISLNK(st.st_mode) or stat.S_ISSOCK(st.st_mode):
            continue  # a link's own mode means nothing; sockets are not data
        if st.st_mode & 0o077:
            out.append(f"{stat.filemode(st.st_mode)} {p.relative_to(root.parent)}")
    return out


def _astronaut_png() -> bytes:
    from skimage import data

    buf = io.BytesIO()
    Image.fromarray(np.asarray(data.astronaut())).save(buf, "PNG")
    return buf.getvalue()


def test_gallery_data_with_the_default_local_stores_is_owner_only(
    model_store: ModelStore, tmp_path: Path
) -> None:
    # Parents that do not exist yet are made by facestream too.
    data_dir = tmp_path / "home" / ".facestream" / "gallery"
    cfg = GalleryConfig(data_dir=data_dir, local_milvus_port=free_ports(1)[0])
    gallery = Gallery.from_settings(
        cfg, FaceConfig(), ModelsConfig(store=model_store.root), store=model_store
    )
    try:
        res = gallery.enroll([("astronaut.png", _astronaut_png())], name="Eileen")
        assert res.identity.n_faces == 1
        assert gallery.local_milvus is not None  # the default: a local Milvus server
        # While it runs: the catalogue and its WAL, the server's data, logs and state.
        assert (data_dir / "catalogue.sqlite3").is_file()
        assert (data_dir / "milvus" / "logs").is_dir()
        assert not readable_by_others(tmp_path / "home"), readable_by_others(tmp_path / "home")
    finally:
        gallery.close()  # the last user stops the server
    assert not readable_by_others(tmp_path / "home"), readable_by_others(tmp_path / "home")


def test_the_model_store_is_owner_only(model_store: ModelStore, tmp_path: Path) -> None:
    """The session's store (``bootstrap_default``, made active), and what a promotion
    writes into a store of its own (its folder, lock and journal)."""
    from pipeline.models.promotion import PendingSwap, store_lock, write_journal

    assert not readable_by_others(model_store.root), readable_by_others(model_store.root)
    fresh = ModelStore(tmp_path / "new" / "models")
    with store_lock(fresh):
        write_journal(fresh, PendingSwap("promote", None, "v", "now"))
    assert not readable_by_others(tmp_path / "new"), readable_by_others(tmp_path / "new")
