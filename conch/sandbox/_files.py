"""A session's working files as a tar archive: packed into a blob, unpacked atomically."""

from __future__ import annotations

import os
import shutil
import tarfile
from pathlib import Path

from conch.sandbox._snapshots import BlobWriter


def pack_directory(directory: Path, writer: BlobWriter) -> None:
    """Write ``directory``'s contents as an uncompressed tar (symlinks stay links)."""
    with tarfile.open(fileobj=writer, mode="w|", format=tarfile.PAX_FORMAT) as archive:
        for entry in sorted(os.listdir(directory)):
            archive.add(directory / entry, arcname=entry, recursive=True)


def unpack_beside(directory: Path, archive_path: Path) -> Path:
    """Unpack the archive into a staging directory next to ``directory``; return it.

    Nothing in ``directory`` changes yet, so a failure here (a damaged archive, a full
    disk) leaves the session as it was. The ``data`` filter refuses absolute paths, ``..``
    and links that point outside the directory.
    """
    staging = directory.with_name(directory.name + ".restoring")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        with tarfile.open(archive_path, mode="r:") as archive:
            archive.extractall(staging, filter="data")
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return staging


def move_contents(staging: Path, directory: Path) -> None:
    """Make ``directory`` hold exactly what ``staging`` holds, keeping its inode.

    The directory itself stays (a sandbox may have it bind-mounted); its old entries are
    removed and the staged ones renamed in, then the empty staging directory is removed.
    """
    directory.mkdir(parents=True, exist_ok=True)
    for entry in list(directory.iterdir()):
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()
    for entry in list(staging.iterdir()):
        os.rename(entry, directory / entry.name)
    staging.rmdir()


def discard(staging: Path) -> None:
    shutil.rmtree(staging, ignore_errors=True)
