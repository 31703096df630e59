"""Cost of one signer-guard store: the two-slot file (node/guard_file.py) against the previous JSON
guard (tmp file, fsync, rename, fsync of the directory), alternating in the same run.

``python -m bench.guard_store [--stores 300] [--rounds 3] [--dir DIR]`` prints ms per store and the
ratio previous/current per round. DIR (default: a temp dir under the current directory) should be
on the disk the node's data directory lives on. Bounded: ``stores`` × ``rounds`` writes per side.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import sys
import tempfile
import time
from pathlib import Path

from node.durable import fsync_dir
from node.guard_file import GuardFile


def json_store(path: Path, size: int, root: bytes) -> None:
    """The guard store before the two-slot format, as a baseline only."""
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w") as f:
        json.dump({"size": size, "root": base64.b64encode(root).decode(), "origin": "sovledger/bench"}, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--stores", type=int, default=300)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--dir", default=".")
    args = ap.parse_args(argv)
    root = b"\x01" * 32
    with tempfile.TemporaryDirectory(prefix="guard-store-", dir=args.dir) as d:
        old_dir, new_dir = Path(d) / "json", Path(d) / "slots"
        old_dir.mkdir()
        new_dir.mkdir()
        guard = GuardFile(new_dir / "signer-guard.bin")
        guard.store(0, root)  # created once, as a node does at its first checkpoint
        try:
            for rnd in range(1, args.rounds + 1):
                t = time.perf_counter()
                for i in range(args.stores):
                    json_store(old_dir / "signer-guard.json", i, root)
                old = (time.perf_counter() - t) / args.stores
                t = time.perf_counter()
                for i in range(args.stores):
                    guard.store(i, root)
                new = (time.perf_counter() - t) / args.stores
                print(f"round {rnd}: json+rename {old * 1e3:.2f} ms/store, two-slot {new * 1e3:.2f} ms/store, "
                      f"ratio {old / new:.2f}")
        finally:
            guard.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
