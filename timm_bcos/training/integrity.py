"""Know whether a folder written earlier is whole, and say clearly when a disk is full.

A checkpoint folder carries a manifest (every file and its size) written after its files; a
folder whose files do not match it (truncated, missing) is not read. For a full disk the error
names the path, the bytes the write needs and the bytes free.
"""
from __future__ import annotations

import errno
import shutil
from pathlib import Path


def folder_manifest(folder: str | Path, exclude: tuple[str, ...] = ()) -> dict[str, int]:
    """{relative path: size in bytes} of every file under `folder`, but those named in `exclude`."""
    folder = Path(folder)
    return {p.relative_to(folder).as_posix(): p.stat().st_size for p in sorted(folder.rglob("*"))
            if p.is_file() and p.relative_to(folder).as_posix() not in exclude}


def manifest_problem(folder: str | Path, manifest: dict[str, int]) -> str | None:
    """None if every file of `manifest` is in `folder` with its size, else what is wrong (one line)."""
    folder = Path(folder)
    for name, size in manifest.items():
        path = folder / name
        if not path.is_file():
            return f"{name} is missing"
        found = path.stat().st_size
        if found != size:
            return f"{name} has {found} of its {size} bytes"
    return None


def is_disk_full(error: BaseException) -> bool:
    return isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT)


def write_error_message(error: OSError, what: str, path: str | Path, needed: int) -> str:
    """One line for a failed write of `what` to `path`: for a full disk, the bytes needed and free."""
    if not is_disk_full(error):
        return f"cannot write {what} to {path}: {type(error).__name__}: {error}"
    return (f"no space left on the device of {path} while writing {what}: it needs about {_size(needed)}, "
            f"{_size(_free_bytes(path))} free")


def _free_bytes(path: str | Path) -> int:
    path = Path(path)
    while not path.exists() and path != path.parent:
        path = path.parent
    return shutil.disk_usage(path).free


def _size(n: int) -> str:
    return f"{n} bytes" if n < 2**20 else f"{n / 2**20:.1f} MiB ({n} bytes)"
