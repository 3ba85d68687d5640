"""A session's working files as a tar archive: packed into a blob, unpacked atomically."""

from __future__ import annotations

import contextlib
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


def swap_in(directory: Path, staging: Path) -> None:
    """Replace ``directory`` with ``staging`` by two renames."""
    old = directory.with_name(directory.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if directory.exists():
        os.rename(directory, old)
    os.rename(staging, directory)
    with contextlib.suppress(OSError):
        shutil.rmtree(old)
