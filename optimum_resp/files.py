"""Writing files so that no reader (or resumed run) ever sees half of one.

Every file optimum-resp writes goes through `atomic_write`: a temporary file in the same folder,
flushed to disk (fsync), given the permissions a plain `open` would (the user's umask, not
mkstemp's 0600), then renamed over the target in one step.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

__all__ = [
    "TMP_SUFFIX",
    "atomic_write",
    "check_writable",
    "default_mode",
    "read_json",
    "umask_permissions",
    "write_json",
]

TMP_SUFFIX = ".tmp"


def default_mode(directory: bool = False) -> int:
    """The permissions `open` (0o666) or `mkdir` (0o777) would give under the current umask."""
    umask = os.umask(0)
    os.umask(umask)
    return (0o777 if directory else 0o666) & ~umask


def atomic_write(path: str | os.PathLike, data: str | bytes | Callable[[Path], None]) -> Path:
    """Write `data` (text, bytes, or a function that writes a file at the path it is given) to `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TMP_SUFFIX)
    tmp = Path(name)
    try:
        if callable(data):
            os.close(fd)
            data(tmp)
        else:
            with os.fdopen(fd, "wb") as f:
                f.write(data.encode("utf-8") if isinstance(data, str) else data)
        synced = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(synced)
        finally:
            os.close(synced)
        os.chmod(tmp, default_mode())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


@contextlib.contextmanager
def umask_permissions(directory: str | os.PathLike) -> Iterator[None]:
    """Give the files written into `directory` inside this block the user's umask permissions.

    transformers writes weights through a private temporary file, which leaves them 0600; a model folder
    others (a server, a shared cache) read must not be.
    """
    directory = Path(directory)
    before = {p: p.stat().st_mtime_ns for p in directory.iterdir()} if directory.is_dir() else {}
    yield
    mode = default_mode()
    for p in directory.iterdir():
        if p.is_file() and before.get(p) != p.stat().st_mtime_ns:
            os.chmod(p, mode)


def write_json(path: str | os.PathLike, data: Any) -> Path:
    """`data` as indented JSON, atomically."""
    return atomic_write(path, json.dumps(data, indent=2) + "\n")


def read_json(path: str | os.PathLike) -> Any:
    """A JSON file, with an error naming the file when it is not valid JSON."""
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path} is not valid JSON ({err}); remove it or restore it from a backup.") from err


def check_writable(folder: str | os.PathLike) -> Path:
    """Prove that files can be written in `folder` (or, when it does not exist yet, in the nearest folder above
    it that does), without creating anything: a clear ValueError otherwise (a file in the way, a read-only disk,
    no permission)."""
    path = Path(folder).expanduser()
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        where = "it is a file" if existing == path else f"{existing} is a file"
        raise ValueError(f"Cannot write to {path}: {where}, not a folder. Choose a folder you can write to.")
    try:
        with tempfile.NamedTemporaryFile(dir=existing, prefix=".resp-write-check-"):
            pass
    except OSError as err:
        raise ValueError(
            f"Cannot write to {path} ({err.strerror or err}). Choose a folder you can write to."
        ) from err
    return path
