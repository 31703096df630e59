"""Checkpoint key rotation end to end on a real node process: rotate while a PSP streams, the
auditor replays the whole log across the rotation and trusts the new key through the chain; a
checkpoint signed by a key the log never announced is refused with a clear message."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from clients.auditor.failures import EXIT_BAD_SIGNATURE, EXIT_OK
from clients.client import LedgerClient
from ledger.note import Signer, Verifier, open_note
from node.keys import load_key_file, write_key_file
from tests.audit.test_tamper import audit, audit_json, feed
from tests.integration.nodeproc import ROOT, NodeProcess, wait_tree_size

pytestmark = pytest.mark.integration


def rotate(target: str) -> tuple[int, dict]:  # type: ignore[type-arg]
    env = dict(os.environ, PYTHONPATH=f"{ROOT}:{ROOT / 'proto'}")
    r = subprocess.run([sys.executable, "-m", "sovledger", "keys", "rotate", "--node", target, "--insecure", "--json"],
                       capture_output=True, text=True, cwd=ROOT, env=env, timeout=60)
    assert r.stdout, r.stderr
    return r.returncode, json.loads(r.stdout)


def signer_of(target: str) -> str:
    with LedgerClient(target) as c:
        note = c.checkpoint().note
        status = c.status()
    assert open_note(note, [Verifier.parse(status.verifier_key)]).verified  # the note matches Status
    return status.verifier_key


def test_rotate_while_streaming_and_audit_across_the_rotation(tmp_path: Path) -> None:
    data = tmp_path / "n1"
    node = NodeProcess(data).start()
    try:
        feed(node.target, 500, seed=1, first_id=1 << 64, accounts=True)
        old_key = signer_of(node.target)
        trust = tmp_path / "trust.json"
        code, text = audit("trust", "init", "--node", node.target, "--trust", str(trust))
        assert code == EXIT_OK, text

        streamer = threading.Thread(target=feed, args=(node.target, 3000, 2, 2 << 64))
        streamer.start()
        wait_tree_size(node.target, 1000)
        code, rot = rotate(node.target)  # while the PSP streams
        streamer.join(120)
        assert not streamer.is_alive()
        assert code == 0 and rot["result"] == "ok", rot
        assert rot["old_verifier_key"] == old_key
        assert rot["takeover_size"] == rot["leaf_index"] + 1
        wait_tree_size(node.target, 50 + 500 + 3000 + 1)
        new_key = signer_of(node.target)
        assert new_key == rot["new_verifier_key"] != old_key
        assert load_key_file(data / "node.key").verifier.to_string() == new_key  # promoted on disk
        assert (data / f"node.key.retired-{Verifier.parse(old_key).key_id.hex()}").exists()

        # the plain check does not know the new key yet, and says how to learn it
        code, text = audit("verify", "--node", node.target, "--trust", str(trust))
        assert code == EXIT_BAD_SIGNATURE and "--full" in text and "KEY_ROTATION" in text, text
        # the full replay follows the chain: the trust store learns the new key from the log
        code, out = audit_json("verify", "--node", node.target, "--trust", str(trust), "--full")
        assert code == EXIT_OK, out
        assert out["key_rotations"] == 1 and out["keys_learned"] == [new_key], out
        assert new_key in json.loads(trust.read_text())["node_keys"]
        code, text = audit("verify", "--node", node.target, "--trust", str(trust))
        assert code == EXIT_OK, text

        # a restart keeps signing with the new key
        node.stop()
        node = NodeProcess(data, port=node.port).start()
        feed(node.target, 250, seed=3, first_id=3 << 64)
        assert signer_of(node.target) == new_key

        # a key nobody announced: replace node.key behind the log's back
        node.stop()
        intruder = Signer.generate(load_key_file(data / "node.key").name)
        write_key_file(data / "node.key", intruder, overwrite=True)
        node = NodeProcess(data, port=node.port).start()
        feed(node.target, 250, seed=4, first_id=4 << 64)
        assert signer_of(node.target) == intruder.verifier.to_string()
        assert "does not hold it" in node.log_text()  # the node says so itself
        code, text = audit("verify", "--node", node.target, "--trust", str(trust), "--full")
        assert code == EXIT_BAD_SIGNATURE, text
        assert intruder.key_id.hex() in text and "neither the trust store holds nor a trusted key announced" in text
    finally:
        node.stop()
