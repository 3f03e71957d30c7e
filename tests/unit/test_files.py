"""The owner-only helpers of pipeline.files, and the stores that use them without a
server: a SQLite catalogue and a Milvus Lite file (issue 17)."""

from __future__ import annotations

import os
import stat
import threading
from pathlib import Path

import numpy as np

from pipeline.files import private_dir, private_umask, write_private


def _others(root: Path) -> list[str]:
    return [
        f"{stat.filemode(p.lstat().st_mode)} {p}"
        for p in [root, *root.rglob("*")]
        if not p.is_symlink() and p.lstat().st_mode & 0o077
    ]


def test_private_dir_makes_missing_parents_owner_only(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o755)
    shared.chmod(0o755)
    made = private_dir(shared / "a" / "b" / "c")
    assert made.is_dir()
    assert not _others(shared / "a")
    assert stat.S_IMODE(shared.stat().st_mode) == 0o755  # an existing folder is left alone
    assert private_dir(made) == made  # idempotent


def test_write_private_and_the_umask(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        write_private(tmp_path / "f.txt", "x")
        (tmp_path / "g.txt").write_text("y")
        (tmp_path / "g.txt").chmod(0o644)
        write_private(tmp_path / "g.txt", b"z")  # an existing file is made owner-only
        assert stat.S_IMODE((tmp_path / "g.txt").stat().st_mode) == 0o600
        done = threading.Barrier(2)

        def other_thread() -> None:
            with private_umask():
                done.wait()
                done.wait()

        t = threading.Thread(target=other_thread)
        t.start()
        done.wait()
        with private_umask(), private_umask():  # reentrant, shared with the other thread
            (tmp_path / "h").mkdir()
            (tmp_path / "h" / "i.bin").write_bytes(b"1")
        assert os.umask(0o077) == 0o077  # the other thread is still inside
        os.umask(0o077)
        done.wait()
        t.join()
        assert os.umask(0o022) == 0o022  # restored when the last one left
        assert not _others(tmp_path), _others(tmp_path)
    finally:
        os.umask(old)


def test_a_sqlite_catalogue_and_a_milvus_lite_file_are_owner_only(tmp_path: Path) -> None:
    from pipeline.gallery.catalogue import Catalogue
    from pipeline.gallery.vectors import Snapshot, VectorStore

    data = tmp_path / "data" / "g"
    cat = Catalogue(f"sqlite:///{data / 'catalogue.sqlite3'}")
    with cat.write_lock():
        cat.counts()
    lite = data / "milvus.db"
    store = VectorStore(str(lite), prefix="t", alias="t_a", index_type="FLAT")
    try:
        name = store.create("v1", 4)
        store.insert(name, "v1", [{"face_id": "f", "identity_id": "i", "crop": ""}], np.eye(4)[:1])
        assert store.search(Snapshot(name, "v1"), np.eye(4)[:1], "v1", 1)[0][0].face_id == "f"
    finally:
        store.close()
        cat.close()
    assert (data / "catalogue.sqlite3").is_file()
    # Milvus Lite runs in this process and writes its collections' files later, with the
    # umask of the moment; its folder is made owner-only when it opens, so they are out of
    # anyone else's reach.
    assert stat.S_IMODE(lite.stat().st_mode) == 0o700
    outside_lite = [e for e in _others(tmp_path / "data") if str(lite) + "/" not in e]
    assert not outside_lite, outside_lite
