"""The federation config (ledger/federation.py): round trip, every refusal names its field, and the
launcher writes a config whose keys are the ones in the nodes' key files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ledger.federation import (
    FORMAT,
    Federation,
    FederationError,
    FederationNode,
    Region,
    UnknownRegion,
    dump_federation,
    parse_federation,
)
from ledger.note import Signer, cosigner_verifier
from node.keys import load_key_file

SEEDS = [bytes([i]) * 32 for i in range(1, 40)]


def _region(name: str, n_nodes: int, seed_at: int) -> Region:
    nodes = tuple(FederationNode(f"node-{i}", f"127.0.0.1:{7000 + seed_at + i}") for i in range(1, n_nodes + 1))
    ck = tuple(Signer(f"{name}/node-{i}", SEEDS[seed_at + 2 * i]).verifier for i in range(n_nodes))
    wk = tuple(cosigner_verifier(Signer(f"{name}/node-{i}/witness", SEEDS[seed_at + 2 * i + 1]))
               for i in range(n_nodes))
    return Region(name, nodes, ck, wk, f"{name}/ca/ca.pem")


def _fed(sizes: list[int]) -> Federation:
    names = ["eu-west", "us-east", "ap-south"]
    return Federation(tuple(_region(names[i], n, 12 * i) for i, n in enumerate(sizes)))


@settings(max_examples=30, deadline=None)
@given(st.lists(st.integers(1, 5), min_size=1, max_size=3))
def test_round_trip(sizes: list[int]) -> None:
    fed = _fed(sizes)
    raw = dump_federation(fed)
    assert parse_federation(raw) == fed
    assert dump_federation(parse_federation(raw)) == raw


def test_lookups() -> None:
    fed = _fed([1, 3, 1])
    assert fed.region("us-east").origin == "sovledger/us-east"
    assert fed.by_origin("sovledger/ap-south") == fed.region("ap-south")
    assert fed.by_origin("sovledger/nowhere") is None
    assert [r.name for r in fed.others("us-east")] == ["eu-west", "ap-south"]
    witnesses = fed.witnesses_of("sovledger/us-east")
    assert len(witnesses) == 2 and all(not w.name.startswith("us-east/") for w in witnesses)
    with pytest.raises(UnknownRegion, match="nowhere"):
        fed.region("nowhere")


def _doc() -> dict:  # type: ignore[type-arg]
    return json.loads(dump_federation(_fed([1, 1])))


def _mutations() -> list[tuple[str, object]]:
    return [
        ("format", lambda d: d.update(format="other/1")),
        ("not JSON", None),
        ("regions\\[1\\].name", lambda d: d["regions"][1].update(name="us east")),
        ("names repeat", lambda d: d["regions"].append(d["regions"][0])),
        ("regions\\[0\\].nodes\\[0\\].address", lambda d: d["regions"][0]["nodes"][0].update(address="nowhere")),
        ("regions\\[0\\].nodes needs", lambda d: d["regions"][0].update(nodes=[])),
        ("regions\\[0\\].checkpoint_keys is empty", lambda d: d["regions"][0].update(checkpoint_keys=[])),
        ("must start with 'eu-west/'", lambda d: d["regions"][0].update(
            checkpoint_keys=d["regions"][1]["checkpoint_keys"])),
        ("cosignature/v1 key", lambda d: d["regions"][0].update(
            witness_keys=d["regions"][0]["checkpoint_keys"])),
        ("unknown keys: colour", lambda d: d["regions"][0].update(colour="red")),
        ("regions\\[1\\].witness_keys is missing", lambda d: d["regions"][1].pop("witness_keys")),
        ("must be a str", lambda d: d["regions"][0]["nodes"][0].update(id=7)),
    ]


@pytest.mark.parametrize("match,mutate", _mutations())
def test_refusals_name_the_field(match: str, mutate: object) -> None:
    if mutate is None:
        raw = b"{not json"
    else:
        doc = _doc()
        mutate(doc)  # type: ignore[operator]
        raw = json.dumps(doc).encode()
    with pytest.raises(FederationError, match=match):
        parse_federation(raw)


def test_same_key_in_two_regions_is_refused() -> None:
    doc = _doc()
    key = Signer("x", SEEDS[0]).verifier.public_key
    a = Signer("eu-west/node-1", SEEDS[0]).verifier.to_string()
    b = Signer("us-east/node-1", SEEDS[0]).verifier.to_string()
    assert key
    doc["regions"][0]["checkpoint_keys"] = [a]
    doc["regions"][1]["checkpoint_keys"] = [b]
    with pytest.raises(FederationError, match="also listed for eu-west"):
        parse_federation(json.dumps(doc).encode())


def test_launcher_writes_the_nodes_keys(tmp_path: Path) -> None:
    from sovledger.regions import create_federation, is_federation, load

    clusters = create_federation(tmp_path, ["eu-west", "us-east"], 3, tls=True)
    assert is_federation(tmp_path)
    fed = load(tmp_path)
    assert fed.names == ("eu-west", "us-east")
    for c, region in zip(clusters, fed.regions, strict=True):
        assert region.addresses == tuple(n.target for n in c.nodes)
        assert (tmp_path / region.ca).is_file()
        for n, ck, wk in zip(c.nodes, region.checkpoint_keys, region.witness_keys, strict=True):
            assert load_key_file(Path(n.data_dir) / "node.key").verifier == ck
            assert cosigner_verifier(load_key_file(Path(n.data_dir) / "witness.key")) == wk
        assert any(a.startswith("--federation") for a in c.extra)
    raw = json.loads((tmp_path / "federation.json").read_text())
    assert raw["format"] == FORMAT


def test_node_config_checks_the_federation(tmp_path: Path) -> None:
    from node.config import ConfigError, load_config

    path = tmp_path / "federation.json"
    path.write_bytes(dump_federation(_fed([1, 1])))
    cfg = load_config(None, {"data_dir": str(tmp_path), "region": "us-east", "insecure": True,
                             "federation": str(path)})
    assert cfg.federation == str(path)
    with pytest.raises(ConfigError, match="region 'ap-south' is not in the federation"):
        load_config(None, {"data_dir": str(tmp_path), "region": "ap-south", "insecure": True,
                           "federation": str(path)})
    path.write_text("{}")
    with pytest.raises(ConfigError, match="format"):
        load_config(None, {"data_dir": str(tmp_path), "region": "us-east", "insecure": True,
                           "federation": str(path)})


def test_add_region_reads_or_makes_the_nodes_keys(tmp_path: Path) -> None:
    from sovledger.regions import add_region

    config = tmp_path / "fed" / "federation.json"
    (tmp_path / "eu-1").mkdir()
    made = Signer.generate("eu-west/node-1")
    from node.keys import write_key_file

    write_key_file(tmp_path / "eu-1" / "node.key", made)  # a node that already started keeps its key
    add_region(config, "eu-west", [f"node-1=eu-1:7100={tmp_path / 'eu-1'}"], "eu-west-ca.pem")
    fed = add_region(config, "ap-south", [f"node-{i}=ap-{i}:7100={tmp_path / f'ap-{i}'}" for i in (1, 2, 3)])
    assert fed.names == ("eu-west", "ap-south")
    assert fed.region("eu-west").checkpoint_keys == (made.verifier,) and fed.region("eu-west").ca == "eu-west-ca.pem"
    again = add_region(config, "ap-south", [f"node-{i}=ap-{i}:7100={tmp_path / f'ap-{i}'}" for i in (1, 2, 3)])
    assert again == fed  # idempotent: the keys made the first time are read back
    wk = load_key_file(tmp_path / "ap-2" / "witness.key")
    assert cosigner_verifier(wk) == fed.region("ap-south").witness_keys[1]
    with pytest.raises(FederationError, match="NODE_ID=HOST:PORT=DATA_DIR"):
        add_region(config, "us-east", ["node-1=127.0.0.1:7000"])
