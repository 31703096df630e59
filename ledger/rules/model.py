"""Rule sets: the value types, their validation, canonical encoding and hash.

Canonical encoding (what is signed, hashed and stored; docs/rules.md): UTF-8 JSON with every field
explicit (defaults filled in), object keys sorted, no insignificant whitespace
(separators ``,`` and ``:``), non-ASCII characters as themselves, integers only (no floats), rules
sorted by (priority, id), tolerances sorted by (ledger, psp_id). Hash: BLAKE3(0x05 ‖ canonical).

Pure: clients (the rules CLI) import it.
"""

from __future__ import annotations

import enum
import json
import re
from dataclasses import dataclass
from typing import Any, Final

from ledger.hashing import ruleset_hash as ruleset_hash  # re-exported
from ledger.types import U32_MAX, U128_MAX, Result

FORMAT: Final = "sovledger-ruleset/1"
RULES_MAX: Final = 64
TOLERANCES_MAX: Final = 256
EXPR_BYTES_MAX: Final = 1024
MESSAGE_BYTES_MAX: Final = 200
I64_MAX: Final = (1 << 63) - 1
_ID_RE: Final = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")


class Action(enum.IntEnum):
    """What a matching rule does; the number is in the leaf's aux (tag 2)."""

    NONE = 0
    REJECT = 1
    FLAG = 2
    HOLD = 3
    ADJUST = 4
    ERROR = 5  # the rule failed at run time: the transfer gets `rule_error`


ACTION_NAMES: Final = {"reject": Action.REJECT, "flag": Action.FLAG, "hold": Action.HOLD, "adjust": Action.ADJUST}


class RuleSetError(ValueError):
    """A rule set that cannot be deployed: the result code and every problem found."""

    def __init__(self, result: Result, problems: list[str]) -> None:
        self.result = result
        self.problems = problems
        super().__init__(f"{result.name.lower()}: " + "; ".join(problems))


@dataclass(frozen=True, slots=True)
class Rule:
    id: str
    expr: str
    action: Action
    priority: int = 100  # lower runs first; ties by id
    code: int = 0  # the rule's own code (reject: 1..65535), in the leaf's aux
    message: str = ""
    hold_timeout_s: int = 0  # hold: the pending transfer's timeout
    adjust_account: int = 0  # adjust: account credited by the adjustment
    adjust_code: int = 0  # adjust: transfer code of the adjustment
    adjust_fixed: int = 0  # adjust: fixed part, minor units
    adjust_bps: int = 0  # adjust: proportional part, basis points of the amount

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id, "expr": self.expr, "action": self.action.name.lower(), "priority": self.priority,
            "code": self.code, "message": self.message, "hold_timeout_s": self.hold_timeout_s,
            "adjust_account": self.adjust_account, "adjust_code": self.adjust_code,
            "adjust_fixed": self.adjust_fixed, "adjust_bps": self.adjust_bps,
        }

    def adjustment(self, amount: int) -> int:
        return self.adjust_fixed + amount * self.adjust_bps // 10_000


@dataclass(frozen=True, slots=True)
class Tolerance:
    """Reconciliation band for a ledger (currency) and PSP (0 = any PSP of that ledger)."""

    ledger: int
    psp_id: int = 0
    abs_minor: int = 0  # |observed - expected| <= abs_minor …
    bps: int = 0  # … or |observed - expected| * 10000 <= bps * expected
    rounding_account: int = 0

    def to_json(self) -> dict[str, Any]:
        return {"ledger": self.ledger, "psp_id": self.psp_id, "abs_minor": self.abs_minor, "bps": self.bps,
                "rounding_account": self.rounding_account}

    def within(self, expected: int, observed: int) -> bool:
        diff = abs(observed - expected)
        return diff <= self.abs_minor or diff * 10_000 <= self.bps * expected


@dataclass(frozen=True, slots=True)
class RuleSet:
    name: str
    version: int
    rules: tuple[Rule, ...] = ()
    tolerances: tuple[Tolerance, ...] = ()
    on_expiry: str = "void"  # pending transfers without callback: "void" (plain expiry) or "flag" (+ exception)
    description: str = ""

    def to_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT, "name": self.name, "version": self.version, "description": self.description,
            "rules": [r.to_json() for r in self.rules],
            "reconciliation": {"on_expiry": self.on_expiry, "tolerances": [t.to_json() for t in self.tolerances]},
        }

    def canonical(self) -> bytes:
        return canonical_json(self.to_json())

    @property
    def hash(self) -> bytes:
        return ruleset_hash(self.canonical())


def canonical_json(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()


def signing_message(canonical: bytes) -> bytes:
    """What an operator signs to deploy: the prefix and the rule set hash."""
    from ledger.codec import RULESET_SIGN_PREFIX

    return RULESET_SIGN_PREFIX + ruleset_hash(canonical)


# -- parsing and validation ------------------------------------------------------------------


class _Problems:
    def __init__(self) -> None:
        self.items: list[str] = []
        self.too_large = False

    def add(self, msg: str, too_large: bool = False) -> None:
        self.items.append(msg)
        self.too_large |= too_large


def _int(p: _Problems, obj: dict[str, Any], key: str, where: str, lo: int, hi: int, default: int = 0) -> int:
    v = obj.get(key, default)
    if isinstance(v, bool) or not isinstance(v, int):
        p.add(f"{where}.{key} must be an integer (no floats, no strings), got {v!r}")
        return default
    if not lo <= v <= hi:
        p.add(f"{where}.{key}={v} is outside {lo}..{hi}")
        return default
    return v


def _str(p: _Problems, obj: dict[str, Any], key: str, where: str, max_bytes: int, default: str = "") -> str:
    v = obj.get(key, default)
    if not isinstance(v, str):
        p.add(f"{where}.{key} must be a string")
        return default
    if len(v.encode()) > max_bytes:
        p.add(f"{where}.{key} is {len(v.encode())} bytes, at most {max_bytes}", too_large=True)
        return default
    return v


def _keys(p: _Problems, obj: dict[str, Any], allowed: set[str], where: str) -> None:
    for k in sorted(set(obj) - allowed):
        p.add(f"{where}: unknown key {k!r}")


_RULE_KEYS: Final = {"id", "expr", "action", "priority", "code", "message", "hold_timeout_s", "adjust_account",
                     "adjust_code", "adjust_fixed", "adjust_bps"}
_TOL_KEYS: Final = {"ledger", "psp_id", "abs_minor", "bps", "rounding_account"}


def parse_ruleset(obj: Any) -> RuleSet:
    """Validate a rule set document (a JSON object) structurally. Expressions are checked by
    ``ledger.rules.compiler.compile_ruleset``. Raises RuleSetError listing every problem."""
    p = _Problems()
    if not isinstance(obj, dict):
        raise RuleSetError(Result.RULESET_INVALID, ["a rule set is a JSON object"])
    _keys(p, obj, {"format", "name", "version", "description", "rules", "reconciliation"}, "ruleset")
    if obj.get("format", FORMAT) != FORMAT:
        p.add(f"format must be {FORMAT!r}")
    name = _str(p, obj, "name", "ruleset", 64)
    if not _ID_RE.fullmatch(name):
        p.add(f"name {name!r} must match [a-z0-9][a-z0-9._-]{{0,63}}")
    version = _int(p, obj, "version", "ruleset", 1, I64_MAX, 1)
    description = _str(p, obj, "description", "ruleset", 1000)
    raw_rules = obj.get("rules", [])
    if not isinstance(raw_rules, list):
        p.add("rules must be a list")
        raw_rules = []
    if len(raw_rules) > RULES_MAX:
        p.add(f"{len(raw_rules)} rules, at most {RULES_MAX}", too_large=True)
        raw_rules = []
    seen: set[str] = set()
    rules = [rule for n, r in enumerate(raw_rules) if (rule := _parse_rule(p, n, r, seen)) is not None]
    tolerances, on_expiry = _parse_reconciliation(p, obj.get("reconciliation", {}))
    if p.items:
        raise RuleSetError(Result.RULESET_TOO_LARGE if p.too_large else Result.RULESET_INVALID, p.items)
    return RuleSet(
        name=name, version=version, description=description,
        rules=tuple(sorted(rules, key=lambda r: (r.priority, r.id))),
        tolerances=tuple(sorted(tolerances, key=lambda t: (t.ledger, t.psp_id))), on_expiry=on_expiry,
    )


def _parse_rule(p: _Problems, n: int, r: Any, seen: set[str]) -> Rule | None:
    where = f"rules[{n}]"
    if not isinstance(r, dict):
        p.add(f"{where} must be an object")
        return None
    _keys(p, r, _RULE_KEYS, where)
    rid = _str(p, r, "id", where, 64)
    if not _ID_RE.fullmatch(rid):
        p.add(f"{where}.id {rid!r} must match [a-z0-9][a-z0-9._-]{{0,63}}")
    if rid in seen:
        p.add(f"{where}.id {rid!r} is used twice")
    seen.add(rid)
    where = f"rule {rid!r}"
    expr = _str(p, r, "expr", where, EXPR_BYTES_MAX)
    if not expr.strip():
        p.add(f"{where}: expr is empty")
    action = ACTION_NAMES.get(r.get("action", ""))
    if action is None:
        p.add(f"{where}: action must be one of {', '.join(ACTION_NAMES)}")
        action = Action.FLAG
    rule = Rule(
        id=rid, expr=expr, action=action, priority=_int(p, r, "priority", where, 0, 0xFFFF, 100),
        code=_int(p, r, "code", where, 0, 0xFFFF), message=_str(p, r, "message", where, MESSAGE_BYTES_MAX),
        hold_timeout_s=_int(p, r, "hold_timeout_s", where, 0, U32_MAX),
        adjust_account=_int(p, r, "adjust_account", where, 0, U128_MAX),
        adjust_code=_int(p, r, "adjust_code", where, 0, 0xFFFF),
        adjust_fixed=_int(p, r, "adjust_fixed", where, 0, I64_MAX),
        adjust_bps=_int(p, r, "adjust_bps", where, 0, 10_000),
    )
    if action == Action.REJECT and rule.code == 0:
        p.add(f"{where}: a reject rule needs its own code (1..65535)")
    if action == Action.HOLD and rule.hold_timeout_s == 0:
        p.add(f"{where}: a hold rule needs hold_timeout_s > 0")
    if action == Action.ADJUST and (rule.adjust_account in (0, U128_MAX) or rule.adjust_code == 0
                                    or not (rule.adjust_fixed or rule.adjust_bps)):
        p.add(f"{where}: an adjust rule needs adjust_account, adjust_code and adjust_fixed and/or adjust_bps")
    return rule


def _parse_reconciliation(p: _Problems, recon: Any) -> tuple[list[Tolerance], str]:
    tolerances: list[Tolerance] = []
    if not isinstance(recon, dict):
        p.add("reconciliation must be an object")
        return tolerances, "void"
    _keys(p, recon, {"on_expiry", "tolerances"}, "reconciliation")
    on_expiry = _str(p, recon, "on_expiry", "reconciliation", 8, "void")
    if on_expiry not in ("void", "flag"):
        p.add("reconciliation.on_expiry must be 'void' or 'flag'")
    raw_tols = recon.get("tolerances", [])
    if not isinstance(raw_tols, list) or len(raw_tols) > TOLERANCES_MAX:
        p.add(f"reconciliation.tolerances must be a list of at most {TOLERANCES_MAX}", too_large=True)
        raw_tols = []
    for n, t in enumerate(raw_tols):
        where = f"tolerances[{n}]"
        if not isinstance(t, dict):
            p.add(f"{where} must be an object")
            continue
        _keys(p, t, _TOL_KEYS, where)
        tol = Tolerance(
            ledger=_int(p, t, "ledger", where, 1, U32_MAX, 1), psp_id=_int(p, t, "psp_id", where, 0, U32_MAX),
            abs_minor=_int(p, t, "abs_minor", where, 0, I64_MAX), bps=_int(p, t, "bps", where, 0, 10_000),
            rounding_account=_int(p, t, "rounding_account", where, 0, U128_MAX),
        )
        if (tol.abs_minor or tol.bps) and tol.rounding_account in (0, U128_MAX):
            p.add(f"{where}: a non-zero band needs a rounding_account")
        tolerances.append(tol)
    keys = [(t.ledger, t.psp_id) for t in tolerances]
    if len(set(keys)) != len(keys):
        p.add("reconciliation.tolerances: (ledger, psp_id) pairs must be unique")
    return tolerances, on_expiry


def parse_canonical(raw: bytes) -> RuleSet:
    """Decode deployed bytes; they must be exactly the canonical encoding of what they describe."""
    try:
        obj = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        raise RuleSetError(Result.RULESET_INVALID, [f"not UTF-8 JSON: {e}"]) from None
    rs = parse_ruleset(obj)
    if rs.canonical() != raw:
        raise RuleSetError(Result.RULESET_INVALID, ["bytes are not the canonical encoding (see docs/rules.md)"])
    return rs
