"""The audit export file: a self-contained, framed copy of a log for offline verification.

Layout (docs/auditor.md, "Export file"): the magic line, one META frame (JSON: origin, signed
checkpoint note, verifier keys, …), every block header, every leaf, and an END frame with the
counts. A frame is ``type u8 ‖ length u32 LE ‖ payload``. Pure: reads and writes file objects and
bytes handed in.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from typing import IO, Any, Final

from clients.auditor.failures import UsageError

EXPORT_MAGIC: Final = b"SOVLEDGER-AUDIT-EXPORT v1\n"
_FRAME: Final = struct.Struct("<BI")
FRAME_META: Final = 1
FRAME_HEADER: Final = 2
FRAME_LEAF: Final = 3
FRAME_END: Final = 0xFF


def write_frame(out: IO[bytes], ftype: int, payload: bytes) -> None:
    out.write(_FRAME.pack(ftype, len(payload)))
    out.write(payload)


def write_export(out: IO[bytes], meta: dict[str, Any], headers: Iterable[bytes],
                 leaves: Iterable[bytes]) -> tuple[int, int]:
    """Magic, one META frame (JSON), every block header, every leaf, an END frame with the counts."""
    out.write(EXPORT_MAGIC)
    write_frame(out, FRAME_META, json.dumps(meta, sort_keys=True).encode())
    nh = nl = 0
    for h in headers:
        write_frame(out, FRAME_HEADER, h)
        nh += 1
    for leaf in leaves:
        write_frame(out, FRAME_LEAF, leaf)
        nl += 1
    write_frame(out, FRAME_END, json.dumps({"headers": nh, "leaves": nl}).encode())
    return nh, nl


@dataclass(slots=True)
class ExportFile:
    meta: dict[str, Any]
    headers: list[bytes]
    leaves: list[bytes]
    complete: bool  # the END frame was present and its counts matched


def read_export(data: bytes) -> ExportFile:
    if not data.startswith(EXPORT_MAGIC):
        raise UsageError(f"not a sovledger audit export (expected magic {EXPORT_MAGIC!r})")
    pos = len(EXPORT_MAGIC)
    meta: dict[str, Any] | None = None
    headers: list[bytes] = []
    leaves: list[bytes] = []
    complete = False
    unpack = _FRAME.unpack_from
    n = len(data)
    while pos < n:
        if pos + 5 > n:
            break
        ftype, length = unpack(data, pos)
        pos += 5
        payload = data[pos : pos + length]
        if len(payload) != length:
            break
        pos += length
        if ftype == FRAME_LEAF:
            leaves.append(payload)
        elif ftype == FRAME_HEADER:
            headers.append(payload)
        elif ftype == FRAME_META:
            meta = json.loads(payload)
        elif ftype == FRAME_END:
            counts = json.loads(payload)
            complete = counts == {"headers": len(headers), "leaves": len(leaves)}
            break
    if meta is None:
        raise UsageError("export file has no META frame")
    return ExportFile(meta, headers, leaves, complete)


