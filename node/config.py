"""Node configuration: defaults, a TOML file, and command-line overrides, validated in one place."""

from __future__ import annotations

import dataclasses
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from ledger.lmdb_store import DEFAULT_MAP_SIZE_BYTES
from ledger.note import NoteError, Verifier
from ledger.types import BATCH_ITEMS_MAX

if TYPE_CHECKING:
    from node.tls import TlsFiles

GRPC_DEFAULT_MAX_MESSAGE_BYTES = 4 << 20


# config keys holding lists of verifier keys (TOML list, or a comma-separated string on the command line)
KEY_LISTS: Final = ("operator_keys", "peer_keys", "psp_verifier_keys")


class ConfigError(ValueError):
    """A configuration value is missing or out of range; the message names the key."""


@dataclass(frozen=True, slots=True)
class PeerConfig:
    node_id: str
    address: str  # host:port of the peer's gRPC server


@dataclass(frozen=True, slots=True)
class NodeConfig:
    data_dir: str
    listen: str = "127.0.0.1:7100"
    advertise: str = ""  # HOST:PORT others reach this node at (leader hints, membership); default: listen
    node_id: str = "node-1"
    region: str = "local"
    peers: tuple[PeerConfig, ...] = ()
    join: bool = False  # start as a learner of an existing region (new or wiped node)
    # a wiped voter: ask the leader to demote this node to a learner, start as one (node/startup.py)
    rejoin: bool = False
    rejoin_tls_config: str = ""  # an operator's client TLS config, used once by --rejoin on a TLS node
    # at start, verify every block of the store (not only the tail) before serving
    verify_full: bool = False
    # rules: verifier keys (C2SP "name+keyid+base64") allowed to deploy rule sets; identical on all replicas
    operator_keys: tuple[str, ...] = ()
    # verifier keys of the region's nodes: when set, a snapshot must be signed by one of them
    # (otherwise the sending leader's key is trusted on first use); list every member, new ones too
    peer_keys: tuple[str, ...] = ()
    # PSP signatures: verifier keys ("[PSP_ID=]name+keyid+base64") whose signed batches are accepted;
    # with psp_require_signatures, unsigned transfers and callbacks are refused (PERMISSION_DENIED)
    psp_verifier_keys: tuple[str, ...] = ()
    psp_require_signatures: bool = False
    psp_verify_threads: int = 2  # Ed25519 verification releases the GIL: one thread per core
    # personal data: free-form fields screened at the edge (node/pii_edge.py): cards,emails[,numeric] or off
    pii_screening: str = "cards,emails"
    # storage
    map_size_bytes: int = DEFAULT_MAP_SIZE_BYTES
    # resident pages of the LMDB map kept before they are dropped from the process (node/memory.py)
    map_resident_bytes_max: int = 256 << 20
    # blocks: a block closes when it holds block_items_max items or block_delay_ms has passed
    block_items_max: int = 32768
    block_delay_ms: float = 2.0
    # bounded queues: beyond these the node answers RESOURCE_EXHAUSTED
    queue_items_max: int = 131072
    stream_inflight_batches_max: int = 32
    max_message_bytes: int = 3 << 20
    # checkpoints: one signed note every N blocks (and always on demand)
    checkpoint_every_blocks: int = 1
    # consensus timing
    tick_ms: int = 50
    election_ticks: int = 10
    heartbeat_ticks: int = 1
    raft_log_keep_entries: int = 256  # Raft entries kept below the applied index; older ones → snapshots
    # TLS (docs/security.md): mutual TLS on the one listener unless `insecure`; make the files with
    # `sovledger ca`. tls_revoked: serials (hex, one per line) refused from the next call on.
    insecure: bool = False
    tls_ca: str = ""
    tls_cert: str = ""
    tls_key: str = ""
    tls_revoked: str = ""
    # fair share per PSP (node/fair_share.py): records/s, bucket size, batches in flight (0 = unlimited);
    # psp_limits overrides them per psp_id: {"7" = {rate_per_s = 5000, burst = 8189, inflight_batches = 8}}
    psp_rate_per_s: float = 0.0
    psp_burst: int = 0
    psp_inflight_batches: int = 0
    psp_limits: dict[str, dict[str, float]] = field(default_factory=dict)
    # observability
    metrics_listen: str = ""
    log_level: str = "INFO"
    log_format: str = "text"  # or "json" (node/logs.py)
    # regions together (docs/federation.md): the federation config file naming every region, its nodes
    # and keys; "" = a region on its own (no witnessing)
    federation: str = ""
    witness_interval_ms: int = 1000  # the leader offers its newest checkpoint to the other regions' witnesses
    aggregate_every_ms: int = 10_000  # the leader appends an AGGREGATE entry this often (with a federation; 0 = off)
    relay_interval_ms: int = 500  # the leader offers pending cross-region obligations this often (node/netting.py)
    settle_every_s: float = 0.0  # > 0: the first region's leader runs a settlement cycle this often (0 = off)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def operator_verifiers(self) -> tuple[Verifier, ...]:
        return tuple(Verifier.parse(k) for k in self.operator_keys)

    @property
    def own_address(self) -> str:
        """Where clients and peers reach this node (a wildcard listen address is not reachable)."""
        return self.advertise or self.listen

    @property
    def origin(self) -> str:
        """The checkpoint origin line: names the region's log."""
        return f"sovledger/{self.region}"

    @property
    def key_name(self) -> str:
        return f"{self.region}/{self.node_id}"

    def validate(self) -> NodeConfig:
        if not self.data_dir:
            raise ConfigError("data_dir is required (--data DIR)")
        _addr(self.listen, "listen")
        if self.advertise:
            _addr(self.advertise, "advertise")
        if self.map_size_bytes < 1 << 20:
            raise ConfigError(f"map_size_bytes={self.map_size_bytes} is below 1 MiB")
        if self.block_items_max < BATCH_ITEMS_MAX:
            raise ConfigError(f"block_items_max must be >= {BATCH_ITEMS_MAX} so a batch never splits")
        if not 0 < self.block_delay_ms <= 1000:
            raise ConfigError("block_delay_ms must be in (0, 1000]")
        if self.queue_items_max < BATCH_ITEMS_MAX:
            raise ConfigError(f"queue_items_max must be >= {BATCH_ITEMS_MAX}")
        if not 64 << 10 <= self.max_message_bytes < GRPC_DEFAULT_MAX_MESSAGE_BYTES:
            raise ConfigError("max_message_bytes must be in [64 KiB, 4 MiB) (below gRPC's default)")
        if self.checkpoint_every_blocks < 1:
            raise ConfigError("checkpoint_every_blocks must be >= 1")
        if not self.region.replace("-", "").replace("_", "").isalnum():
            raise ConfigError(f"region {self.region!r} must be alphanumeric with - or _")
        for p in self.peers:
            _addr(p.address, f"peer {p.node_id}")
        from node.psp_auth import PspKey

        for name in KEY_LISTS:
            parse = PspKey.parse if name == "psp_verifier_keys" else Verifier.parse
            for k in getattr(self, name):
                try:
                    parse(k)
                except NoteError as e:
                    raise ConfigError(f"{name}: {e}") from e
        if self.psp_require_signatures and not self.psp_verifier_keys:
            raise ConfigError("psp_require_signatures needs at least one key in psp_verifier_keys")
        from node.pii_edge import parse_screening

        try:
            parse_screening(self.pii_screening)
        except ValueError as e:
            raise ConfigError(str(e)) from e
        if self.log_format not in ("text", "json"):
            raise ConfigError(f"log_format {self.log_format!r} must be text or json")
        if self.psp_verify_threads < 1:
            raise ConfigError("psp_verify_threads must be >= 1")
        self._validate_tls()
        self._validate_federation()
        return self

    def _validate_federation(self) -> None:
        if self.witness_interval_ms < 10:
            raise ConfigError("witness_interval_ms must be >= 10")
        if self.aggregate_every_ms != 0 and self.aggregate_every_ms < 100:
            raise ConfigError("aggregate_every_ms must be 0 (off) or >= 100")
        if not self.federation:
            return
        from ledger.federation import FederationError, parse_federation

        try:
            fed = parse_federation(Path(self.federation).read_bytes())
            fed.region(self.region)
        except OSError as e:
            raise ConfigError(f"federation: cannot read {self.federation}: {e}") from e
        except FederationError as e:
            raise ConfigError(f"federation {self.federation}: {e}") from e

    def _validate_tls(self) -> None:
        from node.fair_share import parse_limits

        if self.psp_rate_per_s < 0 or self.psp_burst < 0 or self.psp_inflight_batches < 0:
            raise ConfigError("psp_rate_per_s, psp_burst and psp_inflight_batches must be >= 0")
        try:
            parse_limits(self.psp_limits)
        except (ValueError, TypeError, AttributeError) as e:
            raise ConfigError(str(e)) from e
        if self.insecure:
            return
        missing = [k for k in ("tls_ca", "tls_cert", "tls_key") if not getattr(self, k)]
        if missing:
            raise ConfigError(f"TLS is on by default and needs {', '.join(missing)} (--tls-ca/--tls-cert/--tls-key, "
                              "made by `sovledger ca init` and `sovledger ca issue --role node`); "
                              "--insecure serves plaintext instead")
        for key in ("tls_ca", "tls_cert", "tls_key"):
            if not Path(getattr(self, key)).is_file():
                raise ConfigError(f"{key}: no file at {getattr(self, key)}")

    @property
    def tls_files(self) -> TlsFiles | None:
        """The node's TLS files, None when it runs --insecure."""
        from node.tls import TlsFiles

        if self.insecure:
            return None
        return TlsFiles(self.tls_ca, self.tls_cert, self.tls_key, self.tls_revoked, self.federation_cas())

    def federation_cas(self) -> tuple[tuple[str, str], ...]:
        """(region, CA file) of every other region of the federation that names a CA."""
        if not self.federation:
            return ()
        from ledger.federation import parse_federation

        path = Path(self.federation)
        fed = parse_federation(path.read_bytes())
        return tuple((r.name, str(path.parent / r.ca)) for r in fed.others(self.region) if r.ca)


def _addr(value: str, what: str) -> None:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"{what} address {value!r} must be HOST:PORT")


def parse_peers(spec: str) -> tuple[PeerConfig, ...]:
    """``node-1=127.0.0.1:7101,node-2=127.0.0.1:7102`` → peers."""
    peers = []
    for part in filter(None, (p.strip() for p in spec.split(","))):
        node_id, sep, address = part.partition("=")
        if not sep:
            raise ConfigError(f"peer {part!r} must look like NODE_ID=HOST:PORT")
        peers.append(PeerConfig(node_id, address))
    return tuple(peers)


def load_config(path: str | None, overrides: dict[str, Any]) -> NodeConfig:
    values: dict[str, Any] = {}
    if path:
        try:
            values.update(tomllib.loads(Path(path).read_text()))
        except (OSError, tomllib.TOMLDecodeError) as e:
            raise ConfigError(f"cannot read config {path}: {e}") from e
    values.update({k: v for k, v in overrides.items() if v is not None})
    if isinstance(values.get("peers"), str):
        values["peers"] = parse_peers(values["peers"])
    elif isinstance(values.get("peers"), list):
        values["peers"] = tuple(PeerConfig(p["node_id"], p["address"]) for p in values["peers"])
    for key in KEY_LISTS:
        if isinstance(values.get(key), list):
            values[key] = tuple(values[key])
        elif isinstance(values.get(key), str):
            values[key] = tuple(filter(None, values[key].split(",")))
    known = {f.name for f in dataclasses.fields(NodeConfig)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(f"unknown config keys: {', '.join(unknown)}")
    try:
        return NodeConfig(**values).validate()
    except TypeError as e:
        raise ConfigError(str(e)) from e
