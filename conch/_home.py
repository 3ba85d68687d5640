"""Where conch keeps its files on the host: ``$CONCH_HOME``, else ``~/.cache/conch``."""

from __future__ import annotations

import os
from pathlib import Path


def conch_home() -> Path:
    """``$CONCH_HOME``, else ``~/.cache/conch`` (models, sessions and their snapshots)."""
    configured = os.environ.get("CONCH_HOME")
    return Path(configured).expanduser() if configured else Path.home() / ".cache" / "conch"
