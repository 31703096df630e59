"""Where command-line tools connect by default: the nodes of the local launcher's region, if any.

``sovledger cluster up`` records its nodes in ``.sovledger/cluster/cluster.json`` (relative to
the directory it ran in); commands run from the same directory find them there, so
``sovledger rules deploy FILE --key KEY`` or ``sovledger tail`` work without ``--target``. Without
that file the default is ``127.0.0.1:7100`` (a single ``sovledger node`` with its default listen
address). ``SOVLEDGER_TARGET`` overrides both.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Final

LAUNCHER_STATE: Final = Path(".sovledger/cluster/cluster.json")
SINGLE_NODE: Final = "127.0.0.1:7100"


def default_targets() -> str:
    """Comma-separated HOST:PORT list for ``--target`` defaults."""
    env = os.environ.get("SOVLEDGER_TARGET", "")
    if env:
        return env
    try:
        nodes = json.loads(LAUNCHER_STATE.read_text())["nodes"]
        found = [f"127.0.0.1:{int(n['port'])}" for n in nodes]
    except (OSError, ValueError, KeyError, TypeError):
        return SINGLE_NODE
    return ",".join(found) or SINGLE_NODE
