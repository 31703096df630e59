"""node/offload.py: the isolated worker process does not outlive a node killed without a shutdown."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

NODE = """
import asyncio, os, sys
from node.offload import Offload

async def main():
    off = Offload()
    with open(sys.argv[1], "w") as f:
        f.write(str(await off.run_isolated(os.getpid)))
    os._exit(0)  # what SIGKILL leaves behind: no close(), no executor shutdown

asyncio.run(main())
"""


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"  # a zombie waits only for its new parent to reap it


def test_the_isolated_worker_exits_when_its_node_dies_without_closing(tmp_path: Path) -> None:
    pid_file = tmp_path / "worker.pid"  # files, not pipes: the worker inherits them and would hold a pipe open
    with open(tmp_path / "stderr", "w+") as err:
        out = subprocess.run([sys.executable, "-c", NODE, str(pid_file)], cwd=ROOT, stdout=subprocess.DEVNULL,
                             stderr=err, timeout=60, env={**os.environ, "PYTHONPATH": str(ROOT)})
        err.seek(0)
        assert out.returncode == 0, err.read()
    worker = int(pid_file.read_text())
    deadline = time.monotonic() + 15
    while _alive(worker) and time.monotonic() < deadline:
        time.sleep(0.2)
    alive = _alive(worker)
    if alive:
        os.kill(worker, 9)
    assert not alive, f"the offload worker {worker} outlived its node"
