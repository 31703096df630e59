"""Node key files: one C2SP signer key string per file, mode 0600."""

from __future__ import annotations

import os
from pathlib import Path

from ledger.note import Signer


class KeyFileError(Exception):
    pass


def write_key_file(path: Path, signer: Signer, overwrite: bool = False) -> None:
    if path.exists() and not overwrite:
        raise KeyFileError(f"{path} exists; refusing to overwrite a key (use --force)")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(signer.to_string() + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def load_key_file(path: Path) -> Signer:
    try:
        return Signer.parse(path.read_text())
    except OSError as e:
        raise KeyFileError(f"cannot read key {path}: {e}") from e


def describe(signer: Signer) -> dict[str, object]:
    v = signer.verifier
    return {"name": signer.name, "key_id": v.key_id.hex(), "verifier_key": v.to_string(),
            "public_key": v.public_key.hex()}


def generate_key_file(path: Path, name: str, overwrite: bool = False) -> dict[str, object]:
    signer = Signer.generate(name)
    write_key_file(path, signer, overwrite)
    return describe(signer)


def describe_key_file(path: Path) -> dict[str, object]:
    return describe(load_key_file(path))
