"""Durable file-system steps shared by the node's small local files (signer guard, vault keys/records)."""

from __future__ import annotations

import os
from pathlib import Path


def fsync_dir(directory: Path) -> None:
    """Make a file created or renamed in ``directory`` survive a crash (fsync of the directory entry)."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
