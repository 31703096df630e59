"""The federation config: which regions exist, where their nodes are, which keys speak for them.

One JSON document (``federation.json``, format ``sovledger-federation/1``, docs/federation.md) that
every node of every region and every auditor reads. It names, per region: the region name (its
checkpoint origin is ``sovledger/NAME``), the nodes (id and HOST:PORT), the verifier keys that sign
its checkpoints (C2SP Ed25519, alg 0x01), the witness keys its nodes cosign foreign checkpoints with
(C2SP cosignature/v1, alg 0x04) and, optionally, the region CA certificate (PEM file, relative to
the config file's directory) that other regions trust for the ``federation`` role only.

Pure: bytes in, a validated frozen value or a ``FederationError`` naming the bad field out.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Final

from ledger.note import ALG_COSIGNATURE_V1, ALG_ED25519, NoteError, Verifier

FORMAT: Final = "sovledger-federation/1"
REGIONS_MAX: Final = 16
NODES_PER_REGION_MAX: Final = 7
CONFIG_BYTES_MAX: Final = 1 << 20


class FederationError(ValueError):
    """The federation config is malformed; the message names the field (``regions[1].nodes[0].address``)."""


class UnknownRegion(FederationError):
    def __init__(self, name: str, known: tuple[str, ...]) -> None:
        self.name = name
        super().__init__(f"region {name!r} is not in the federation ({', '.join(known) or 'none'})")


def origin_of(region: str) -> str:
    """A region's checkpoint origin line (node/config.py names its own log the same way)."""
    return f"sovledger/{region}"


def valid_region_name(name: str) -> bool:
    return bool(name) and len(name) <= 64 and name.replace("-", "").replace("_", "").isalnum()


@dataclass(frozen=True, slots=True)
class FederationNode:
    node_id: str
    address: str  # HOST:PORT, the node's one gRPC listener


@dataclass(frozen=True, slots=True)
class Region:
    name: str
    nodes: tuple[FederationNode, ...]
    checkpoint_keys: tuple[Verifier, ...]  # sign this region's checkpoints (alg 0x01)
    witness_keys: tuple[Verifier, ...]  # cosign other regions' checkpoints (alg 0x04)
    ca: str = ""  # region CA certificate file ("" = no TLS), relative to the config's directory

    @property
    def origin(self) -> str:
        return origin_of(self.name)

    @property
    def addresses(self) -> tuple[str, ...]:
        return tuple(n.address for n in self.nodes)


@dataclass(frozen=True, slots=True)
class Federation:
    regions: tuple[Region, ...]

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(r.name for r in self.regions)

    def region(self, name: str) -> Region:
        for r in self.regions:
            if r.name == name:
                return r
        raise UnknownRegion(name, self.names)

    def by_origin(self, origin: str) -> Region | None:
        return next((r for r in self.regions if r.origin == origin), None)

    def others(self, name: str) -> tuple[Region, ...]:
        """Every region but ``name`` (which must exist)."""
        self.region(name)
        return tuple(r for r in self.regions if r.name != name)

    def witnesses_of(self, origin: str) -> tuple[Verifier, ...]:
        """The witness keys allowed to cosign ``origin``'s checkpoints: every other region's."""
        return tuple(k for r in self.regions if r.origin != origin for k in r.witness_keys)


# -- parsing ----------------------------------------------------------------------------------


def _field(obj: dict[str, Any], key: str, kind: type, where: str) -> Any:
    if key not in obj:
        raise FederationError(f"{where}.{key} is missing")
    value = obj[key]
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise FederationError(f"{where}.{key} must be a {kind.__name__}, got {type(value).__name__}")
    return value


def _address(value: str, where: str) -> str:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise FederationError(f"{where} {value!r} must be HOST:PORT")
    return value


def _keys(raw: list[Any], alg: int, region: str, where: str) -> tuple[Verifier, ...]:
    out = []
    for i, text in enumerate(raw):
        w = f"{where}[{i}]"
        if not isinstance(text, str):
            raise FederationError(f"{w} must be a verifier key string")
        try:
            v = Verifier.parse(text)
        except NoteError as e:
            raise FederationError(f"{w}: {e}") from None
        if v.alg != alg:
            want = "an Ed25519 checkpoint key (0x01)" if alg == ALG_ED25519 else "a cosignature/v1 key (0x04)"
            raise FederationError(f"{w}: {v.name} must be {want}")
        if not v.name.startswith(f"{region}/"):
            raise FederationError(f"{w}: key name {v.name!r} must start with '{region}/'")
        out.append(v)
    return tuple(out)


def _nodes(raw: list[Any], where: str) -> tuple[FederationNode, ...]:
    if not 1 <= len(raw) <= NODES_PER_REGION_MAX:
        raise FederationError(f"{where} needs 1 to {NODES_PER_REGION_MAX} nodes, got {len(raw)}")
    out: list[FederationNode] = []
    for i, n in enumerate(raw):
        w = f"{where}[{i}]"
        if not isinstance(n, dict):
            raise FederationError(f"{w} must be an object with id and address")
        node = FederationNode(_field(n, "id", str, w), _address(_field(n, "address", str, w), f"{w}.address"))
        if not node.node_id or any(m.node_id == node.node_id for m in out):
            raise FederationError(f"{w}.id {node.node_id!r} is empty or repeated")
        out.append(node)
    return tuple(out)


def _region(raw: Any, where: str) -> Region:
    if not isinstance(raw, dict):
        raise FederationError(f"{where} must be an object")
    name = _field(raw, "name", str, where)
    if not valid_region_name(name):
        raise FederationError(f"{where}.name {name!r} must be alphanumeric with - or _ (at most 64)")
    ckeys = _keys(_field(raw, "checkpoint_keys", list, where), ALG_ED25519, name, f"{where}.checkpoint_keys")
    wkeys = _keys(_field(raw, "witness_keys", list, where), ALG_COSIGNATURE_V1, name, f"{where}.witness_keys")
    if not ckeys:
        raise FederationError(f"{where}.checkpoint_keys is empty: nobody could verify {name}'s checkpoints")
    ca = raw.get("ca", "")
    if not isinstance(ca, str):
        raise FederationError(f"{where}.ca must be a file name")
    extra = sorted(set(raw) - {"name", "nodes", "checkpoint_keys", "witness_keys", "ca"})
    if extra:
        raise FederationError(f"{where} has unknown keys: {', '.join(extra)}")
    return Region(name, _nodes(_field(raw, "nodes", list, where), f"{where}.nodes"), ckeys, wkeys, ca)


def parse_federation(data: bytes) -> Federation:
    """Parse and validate a federation config (the bytes of ``federation.json``)."""
    if len(data) > CONFIG_BYTES_MAX:
        raise FederationError(f"federation config is {len(data)} bytes, above {CONFIG_BYTES_MAX}")
    try:
        doc = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise FederationError(f"federation config is not JSON: {e}") from None
    if not isinstance(doc, dict):
        raise FederationError("federation config must be a JSON object")
    if doc.get("format") != FORMAT:
        raise FederationError(f"format must be {FORMAT!r}, got {doc.get('format')!r}")
    raw = _field(doc, "regions", list, "federation")
    if not 1 <= len(raw) <= REGIONS_MAX:
        raise FederationError(f"federation.regions needs 1 to {REGIONS_MAX} regions, got {len(raw)}")
    regions = tuple(_region(r, f"regions[{i}]") for i, r in enumerate(raw))
    _check_unique(regions)
    return Federation(regions)


def _check_unique(regions: tuple[Region, ...]) -> None:
    names = [r.name for r in regions]
    if len(set(names)) != len(names):
        raise FederationError(f"region names repeat: {', '.join(names)}")
    seen: dict[bytes, str] = {}
    for r in regions:
        for k in r.checkpoint_keys + r.witness_keys:
            other = seen.setdefault(k.public_key, r.name)
            if other != r.name:
                raise FederationError(f"key {k.name} of {r.name} is also listed for {other}")


def dump_federation(fed: Federation) -> bytes:
    """The canonical JSON form (sorted keys, two-space indent, trailing newline)."""
    doc = {"format": FORMAT, "regions": [
        {"name": r.name, "nodes": [{"id": n.node_id, "address": n.address} for n in r.nodes],
         "checkpoint_keys": [k.to_string() for k in r.checkpoint_keys],
         "witness_keys": [k.to_string() for k in r.witness_keys], **({"ca": r.ca} if r.ca else {})}
        for r in fed.regions]}
    return (json.dumps(doc, indent=2, sort_keys=True) + "\n").encode()
