"""`sovledger cluster … --data REL` resolves REL against the caller's directory, never the package's."""

from __future__ import annotations

from pathlib import Path

import pytest

from clients.targets import SINGLE_NODE, default_targets
from sovledger.cluster import Cluster


def test_relative_data_is_taken_from_the_working_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    cluster = Cluster(Path("eu"))
    assert cluster.data == tmp_path / "eu"
    cluster.create(3, "eu", [], first_port=7100)
    assert [n.port for n in cluster.nodes] == [7100, 7101, 7102]
    assert all(Path(n.data_dir).is_absolute() and Path(n.data_dir).parent == tmp_path / "eu" for n in cluster.nodes)


def test_cli_default_targets_follow_the_launcher_state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("SOVLEDGER_TARGET", raising=False)
    assert default_targets() == SINGLE_NODE
    Cluster(Path(".sovledger/cluster")).create(3, "local", [], first_port=7300)
    assert default_targets() == "127.0.0.1:7300,127.0.0.1:7301,127.0.0.1:7302"
    monkeypatch.setenv("SOVLEDGER_TARGET", "127.0.0.1:7999")
    assert default_targets() == "127.0.0.1:7999"
