"""Shared helpers for the PII tests: scanning files for bytes that must be gone."""

from __future__ import annotations

from pathlib import Path


def files_containing(root: Path, needles: list[bytes]) -> list[tuple[Path, bytes]]:
    """Every (file, needle) such that the file's bytes contain the needle, anywhere under root."""
    hits = []
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        data = path.read_bytes()
        hits.extend((path, n) for n in needles if n in data)
    return hits
