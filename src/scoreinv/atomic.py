"""Atomic file writes: write to a temporary file in the target folder, fsync, then rename.

An interrupted run (SIGKILL included) leaves either the old file or the new one, never a
truncated one. Every writer of checkpoints, studies and results goes through here.
"""
from __future__ import annotations

import io
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = ""):
    """Yield a temporary path beside `path`; on success rename it onto `path`.

    `suffix` lets writers that insist on an extension (np.savez, nibabel) see one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp" + suffix, dir=path.parent)
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_umask())
    try:
        yield Path(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve() or (a.exists() and b.exists() and os.path.samefile(a, b))
    except OSError:
        return False


def check_new_output(path: str | os.PathLike, *, overwrite: bool, flag: str = "--out", inputs=(),
                     side_files=()) -> Path:
    """The one check of an output location, run before any computation.

    Refuses (ScoreinvError naming `flag` and the path): an output equal to one of `inputs`
    (always, even with `overwrite`); an existing output or side file (e.g. the `_std` map) unless
    `overwrite`; a folder where a file is expected; a location whose nearest existing folder is
    not writable. Returns `Path(path)`.
    """
    from .errors import ScoreinvError

    path = Path(path)
    targets = [path, *map(Path, side_files)]
    for t in targets:
        for i in inputs:
            if i is not None and _same_file(t, Path(i)):
                raise ScoreinvError(f"{flag} {t}: is the input file {i}; choose another output name")
    for t in targets:
        if t.is_dir():
            raise ScoreinvError(f"{flag} {t}: is a folder; expected a file name")
        if t.exists() and not overwrite:
            raise ScoreinvError(f"{flag} {t}: exists; pass --overwrite to replace it")
    parent = path.absolute().parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise ScoreinvError(f"{flag} {path}: {parent} is not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ScoreinvError(f"{flag} {path}: cannot write in {parent} (permission denied)")
    return path


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        Path(tmp).write_bytes(data)


def write_text(path: str | os.PathLike, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def torch_save(obj, path: str | os.PathLike) -> None:
    """torch.save, atomically."""
    import torch

    buf = io.BytesIO()
    torch.save(obj, buf)
    write_bytes(path, buf.getvalue())


def savez(path: str | os.PathLike, **arrays) -> None:
    """numpy.savez_compressed, atomically."""
    import numpy as np

    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    write_bytes(path, buf.getvalue())


def _umask() -> int:
    """The process umask (read without changing it for long), so results get normal permissions."""
    m = os.umask(0)
    os.umask(m)
    return m


class atomic_dir:
    """Build a folder in a temporary sibling, then swap it into place (the old one is removed
    only after the swap). `check(target)` runs first and may refuse an existing target, so that
    a caller can make sure user data is never deleted."""

    def __init__(self, target: Path, check=None):
        self.target, self.check = Path(target), check

    def __enter__(self) -> Path:
        t = self.target
        if self.check is not None:
            self.check(t)
        t.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = Path(tempfile.mkdtemp(prefix=f".{t.name}.", suffix=".tmp", dir=t.parent))
        return self.tmp

    def __exit__(self, exc_type, exc, tb):
        if exc_type is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            return False
        for p in self.tmp.iterdir():
            with open(p, "rb") as f:
                os.fsync(f.fileno())
        os.chmod(self.tmp, 0o777 & ~_umask())
        old = None
        if self.target.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{self.target.name}.", suffix=".old", dir=self.target.parent))
            os.rmdir(old)
            os.replace(self.target, old)
        os.replace(self.tmp, self.target)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        return False
