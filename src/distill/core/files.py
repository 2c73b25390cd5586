"""Atomic file writes (readers see the old file or the new one, never a half-written mix) and
private output directories (only their owner can read what distill writes there)."""

from __future__ import annotations

import errno
import hashlib
import os
import re
import stat
import uuid
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import save_file

from distill.core.errors import OutputError


def cache_home() -> Path:
    """distill's cache outside any repository (converted models, datasets, recordings):
    $DISTILL_CACHE, else $XDG_CACHE_HOME/distill, else ~/.cache/distill."""
    root = os.environ.get("DISTILL_CACHE") or Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "distill"
    return Path(root)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write `data` to `path` so that readers see the old file or the new one, never a mix."""
    with writing(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = _temp_path(path)
        try:
            with os.fdopen(_create(tmp), "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        _fsync_dir(path.parent)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def atomic_save_tensors(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
    with writing(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = _temp_path(path)
        try:
            os.close(_create(tmp))
            mode = os.stat(tmp).st_mode & 0o777
            save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, tmp, metadata=metadata)
            _fsync_file(tmp)
            os.chmod(tmp, mode)  # safetensors writes 0o600 files; keep the mode a new file gets here
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        _fsync_dir(path.parent)


def give_new_file_mode(directory: Path) -> None:
    """Give every file under `directory` the mode a new file gets there (0o666 less the umask), as
    `atomic_save_tensors` does for one file: writers such as safetensors create 0o600 files, which
    would leave one file of an exported folder unreadable to those who can read the rest."""
    probe = _temp_path(directory / "mode")
    os.close(_create(probe))
    try:
        mode = os.stat(probe).st_mode & 0o777
    finally:
        probe.unlink()
    for path in directory.rglob("*"):
        if path.is_file() and not path.is_symlink():
            os.chmod(path, mode)


def make_private_dir(path: Path) -> Path:
    """Create directory `path` (and missing parents) with the leaf readable by its owner only (0o700).

    Files inside keep the mode any new file gets; the private directory is what keeps other users
    out. An existing directory keeps its mode, with a warning if anyone may replace files in it.
    """
    path = Path(path)
    with writing(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            path.mkdir(mode=0o700)
        except FileExistsError:
            if not path.is_dir():
                raise
            warn_if_world_writable(path)
    warn_if_world_writable(path.parent)
    return path


def warn_if_world_writable(directory: Path) -> None:
    """Warn when every user may create, rename or delete files in `directory` (no sticky bit, as /tmp has)."""
    mode = directory.stat().st_mode
    if os.name != "nt" and mode & stat.S_IWOTH and not mode & stat.S_ISVTX:
        warnings.warn(f"{directory} is writable by every user (mode {oct(mode & 0o7777)}), so another user "
                      f"could replace what distill writes there. Fix: chmod o-w {directory}", stacklevel=3)


@contextmanager
def writing(path: Path) -> Iterator[None]:
    """Turn the system refusing to write `path` (disk full, no permission) into an OutputError
    that names the file and the fix, instead of a traceback from deep inside a save."""
    try:
        yield
    except (OSError, SafetensorError) as exc:
        code = exc.errno if isinstance(exc, OSError) else _os_error_code(str(exc))
        if code not in _FULL and code not in _DENIED:
            raise
        where = f"Cannot write {path}"
        if code in _FULL:
            raise OutputError(
                f"{where}: the disk is full or a quota/size limit was reached ({os.strerror(code)}). "
                "Free space on that disk, or write somewhere else (output_dir=..., teacher.cache_dir=..., "
                "--output ...), then run the same command again (with --resume where it has one): "
                "finished work is kept.") from exc
        raise OutputError(
            f"{where}: permission denied ({os.strerror(code)}). Make {path.parent} writable by this "
            "user (chmod/chown), or write somewhere else (output_dir=..., teacher.cache_dir=..., "
            "--output ...).") from exc


_FULL = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}
_DENIED = {errno.EACCES, errno.EPERM, errno.EROFS}


def _os_error_code(message: str) -> int | None:
    """The errno inside a safetensors error message ("... (os error 28)"), if any."""
    found = re.search(r"os error (\d+)", message)
    return int(found.group(1)) if found else None


def _temp_path(path: Path) -> Path:
    """A fresh name beside `path`: the same filesystem, so the final rename is atomic."""
    return path.parent / f".{path.name}.{uuid.uuid4().hex[:12]}.tmp"


def _create(path: Path) -> int:
    """Create `path` for writing with the mode any new file gets (0o666 less the umask).

    tempfile.mkstemp would force 0o600, leaving reports and checkpoints readable by their owner only.
    """
    return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDWR | getattr(os, "O_BINARY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(directory: Path) -> None:
    """Make a rename inside `directory` survive a power cut. Some systems cannot open a directory
    (Windows) or fsync one (some network filesystems); the rename itself has happened either way."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file's bytes, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
