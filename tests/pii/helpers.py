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


def vault_key(data_dir: Path, subject_id: int) -> bytes | None:
    """The subject's data key as it sits in a replica's key file (read by the test, never by clients)."""
    from node.vault_store import SLOT, SLOT_SIZE, SLOT_USED

    path = data_dir / "vault" / "keys.bin"
    raw = path.read_bytes() if path.exists() else b""
    for off in range(0, len(raw) - SLOT_SIZE + 1, SLOT_SIZE):
        state, _res, subject, key = SLOT.unpack_from(raw, off)
        if state == SLOT_USED and int.from_bytes(subject, "little") == subject_id:
            return bytes(key)
    return None
