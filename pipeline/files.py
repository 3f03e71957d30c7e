"""Owner-only local data: what facestream writes holds faces or what identifies them (the
catalogue and its crops, face vectors, event crops, exports, trained models), so nothing
it creates may be readable by other users of the machine.

Three tools, used where facestream creates its data roots:

- :func:`private_dir` makes a folder and its missing parents mode 0700;
- :func:`private_file` creates (or opens) a file mode 0600;
- :func:`private_umask` for files that libraries create (SQLite, torch, ONNX, NumPy), and
  ``PRIVATE_UMASK`` for the processes facestream starts (``subprocess`` takes ``umask=``):
  everything they create is owner-only.

Folders that already exist are left as they are: an operator may share one on purpose
(a volume whose group a pod shares, say); what facestream creates inside is still
owner-only.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator
from pathlib import Path

PRIVATE_UMASK = 0o077
DIR_MODE = 0o700
FILE_MODE = 0o600
# The umask is one per process: threads that enter private_umask() together share it.
_umask_lock = threading.Lock()
_umask_depth = 0
_umask_saved = 0


def private_dir(path: str | os.PathLike[str]) -> Path:
    """``path`` as a folder, it and its missing parents made owner-only (0700)."""
    path = Path(path)
    missing = []
    p = path
    while not p.exists() and p != p.parent:
        missing.append(p)
        p = p.parent
    for d in reversed(missing):
        with contextlib.suppress(FileExistsError):  # made meanwhile by another process
            d.mkdir(mode=DIR_MODE)
            os.chmod(d, DIR_MODE)  # mkdir's mode is filtered by the umask
    if not path.is_dir():
        raise NotADirectoryError(f"{path} is not a folder")
    return path


def private_file(path: str | os.PathLike[str], flags: int = os.O_RDWR) -> int:
    """A descriptor of ``path``, created owner-only (0600) when it does not exist."""
    return os.open(path, flags | os.O_CREAT, FILE_MODE)


def write_private(path: str | os.PathLike[str], data: bytes | str) -> None:
    """Write ``data`` to ``path`` (replacing it), the file owner-only."""
    raw = data.encode() if isinstance(data, str) else data
    fd = private_file(path, os.O_WRONLY | os.O_TRUNC)
    with os.fdopen(fd, "wb") as f:
        f.write(raw)
    os.chmod(path, FILE_MODE)  # an existing file keeps its mode through O_CREAT


@contextlib.contextmanager
def private_umask() -> Iterator[None]:
    """Files and folders created meanwhile, by any code of this process, are owner-only.

    Reentrant and shared by threads: the umask is restored when the last one leaves. (A
    thread that creates a file meanwhile outside such a block gets it owner-only too,
    which is never less safe.)"""
    global _umask_depth, _umask_saved
    with _umask_lock:
        if _umask_depth == 0:
            _umask_saved = os.umask(PRIVATE_UMASK)
        _umask_depth += 1
    try:
        yield
    finally:
        with _umask_lock:
            _umask_depth -= 1
            if _umask_depth == 0:
                os.umask(_umask_saved)
