"""Compile a rule set's CEL expressions into one program and one cheap activation builder.

Deploy-time checks (a rule set failing any of them is refused with `ruleset_invalid` or
`ruleset_too_large`, and the dry-run/validate path shows every problem):

- size: at most EXPR_BYTES_MAX bytes, TOKENS_MAX tokens and DEPTH_MAX nested brackets per rule
  (checked by our own lexer *before* the CEL parser sees the text, so hostile nesting never reaches it);
- vocabulary: every identifier is a known field path (``transfer.amount``), a whitelisted function
  (``size``, ``int``, ``uint``, ``string``) or method (``startsWith``, ``endsWith``, ``contains``),
  or ``true``/``false``/``null``/``in``. No macros (``has``, ``exists``, ``all``, ``map``, ``filter``),
  no maps, no indexing, no floats: no loops, so evaluation cost is linear in the (bounded) size;
- types: every rule is evaluated against two probe activations; a type error (no such overload),
  an unknown field or a non-bool result refuses the rule set.

At run time any evaluation error (overflow, division by zero, a type error on a branch the probes
did not reach) is a deterministic outcome, `rule_error`, attributed to the first rule (in
precedence order) that errs.

Speed: field paths are rewritten to flat variables (``transfer.amount`` → ``transfer_amount``),
the rules are folded into programs of up to GROUP_MAX rules each, ``r0 ? 0 : (r1 ? 1 : … -1)``
(first match wins, same semantics as evaluating them in order; one program for all would not parse
beyond ~47 rules), and the activation is a small flat dict holding only the
fields the rule set references, built by a function generated from the fixed field table below.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final

from ledger import risk
from ledger.risk import KEY_IN, KEY_OUT, KEY_PSP, deviation_bps, window_features
from ledger.rules.fastpath import RulePlan, generate, plan_rule
from ledger.rules.lowering import lower
from ledger.rules.model import Action, Rule, RuleSet, RuleSetError, Tolerance, ruleset_hash
from ledger.types import Result

TOKENS_MAX: Final = 200
DEPTH_MAX: Final = 12
I64_MAX: Final = (1 << 63) - 1
I64_MIN: Final = -(1 << 63)

_ACCOUNT_FIELDS: Final = {
    "debits_pending": "_sat({a}.debits_pending)", "debits_posted": "_sat({a}.debits_posted)",
    "credits_pending": "_sat({a}.credits_pending)", "credits_posted": "_sat({a}.credits_posted)",
    "balance": "_ssat({a}.credits_posted - {a}.debits_posted - {a}.debits_pending)",
    "flags": "{a}.flags", "code": "{a}.code",
    "ledger": "{a}.ledger", "user_data": "_sat(int.from_bytes({a}.record[16:32], 'little'))",
}
_WINDOW_FIELDS: Final = ("count_1m", "count_1h", "count_24h", "sum_1m", "sum_1h", "sum_24h")

# dotted path -> (CEL type, Python expression over rec, dra, cra, ts, height and prelude values)
FIELDS: Final[dict[str, tuple[str, str]]] = {
    "transfer.amount": ("int", "(rec[3] if rec[3] <= I64 and not rec[4] else I64)"),
    "transfer.ledger": ("int", "rec[9]"),
    "transfer.code": ("int", "rec[12]"),
    "transfer.psp_id": ("int", "rec[10]"),
    "transfer.flags": ("int", "rec[13]"),
    "transfer.pending": ("bool", "bool(rec[13] & 2)"),
    "transfer.timeout_s": ("int", "rec[11]"),
    "transfer.user_data": ("int", "_sat(int.from_bytes(rec[6], 'little'))"),
    "transfer.external_ref": ("string", "rec[7].rstrip(b'\\x00').decode('utf-8', 'replace')"),
    "psp.id": ("int", "rec[10]"),
    "block.timestamp_ns": ("int", "_sat(ts)"),
    "block.height": ("int", "height"),
    "risk.new_payee": ("bool", "not R.seen(rec[1], rec[2])"),
    "risk.amount_ewma": ("int", "_sat(_dev[0])"),
    "risk.amount_dev_bps": ("int", "_ssat(_dev[1])"),
    "risk.history_n": ("int", "_sat(_dev[2])"),
}
for _side, _var in (("debit", "dra"), ("credit", "cra")):
    for _name, _expr in _ACCOUNT_FIELDS.items():
        FIELDS[f"{_side}.{_name}"] = ("int", _expr.format(a=_var))
for _group, _pre in (("debit", "_wo"), ("credit", "_wi"), ("psp", "_wp")):
    for _n, _name in enumerate(_WINDOW_FIELDS):
        FIELDS[f"risk.{_group}.{_name}"] = ("int", f"_sat({_pre}[{_n}])")

# prelude values computed once per activation when a field needs them
_PRELUDE: Final = {  # in this order; "_so" (the payer's state) is read once for both of its users
    "_so": "_so = R.out(rec[1])",
    "_wo": "_wo = window_features(_so, ts)",
    "_wi": "_wi = window_features(R.inc(rec[2]), ts)",
    "_wp": "_wp = window_features(R.psp(rec[10]), ts)",
    "_dev": "_dev = deviation_bps(_so, rec[3] | rec[4] << 64)",
}
ROOTS: Final = frozenset(p.split(".")[0] for p in FIELDS)
_PREFIXES: Final = frozenset(".".join(p.split(".")[:i]) for p in FIELDS for i in range(1, p.count(".") + 1))
FUNCTIONS: Final = frozenset({"size", "int", "uint", "string"})
METHODS: Final = frozenset({"startsWith", "endsWith", "contains"})
KEYWORDS: Final = frozenset({"true", "false", "null", "in"})
CEL_FUNCTIONS_ALLOWED: Final = frozenset({
    "!_", "-_", "@in", "_!=_", "_%_", "_&&_", "_*_", "_+_", "_-_", "_/_", "_<=_", "_<_", "_==_", "_>=_", "_>_",
    "_?_:_", "_||_", *FUNCTIONS, *METHODS,
})

_TOKEN_RE: Final = re.compile(
    r"""(?P<ws>\s+|//[^\n]*)
      | (?P<string>[rR]?("(?:[^"\\\n]|\\.)*"|'(?:[^'\\\n]|\\.)*'))
      | (?P<number>0[xX][0-9a-fA-F]+[uU]?|\d+(?:\.\d*)?(?:[eE][+-]?\d+)?[uU]?|\.\d+(?:[eE][+-]?\d+)?)
      | (?P<ident>[A-Za-z_][A-Za-z0-9_]*)
      | (?P<punct>&&|\|\||==|!=|<=|>=|[-+*/%<>!?:.,()\[\]{}])""",
    re.VERBOSE,
)


def _cel_compile(text: str) -> Any:
    """A CEL program. The ``cel`` package is imported on first use: importing it loads its command
    line (prompt_toolkit, numpy), ~0.6 s that every CLI start and every node without rules would pay."""
    import cel

    return cel.compile(text)


def flat(path: str) -> str:
    return path.replace(".", "_")


def _tokens(expr: str, problems: list[str]) -> tuple[list[tuple[str, str]], bool]:
    """Lex and check size and nesting (raising for those): (tokens, unbalanced); other problems are
    added to ``problems``."""
    tokens: list[tuple[str, str]] = []
    pos = 0
    while pos < len(expr):
        m = _TOKEN_RE.match(expr, pos)
        if m is None:
            raise RuleSetError(Result.RULESET_INVALID, [f"unexpected character {expr[pos]!r} at offset {pos}"])
        pos = m.end()
        kind = m.lastgroup or ""
        if kind == "string" and expr[m.start()] in "bB":
            problems.append("bytes literals are not supported")
        if kind != "ws":
            tokens.append((kind, m.group()))
    if len(tokens) > TOKENS_MAX:
        raise RuleSetError(Result.RULESET_TOO_LARGE, [f"{len(tokens)} tokens, at most {TOKENS_MAX}"])
    depth = 0
    for kind, text in tokens:
        if text in "([":
            depth += 1
            if depth > DEPTH_MAX:
                raise RuleSetError(Result.RULESET_TOO_LARGE, [f"brackets nest deeper than {DEPTH_MAX}"])
        elif text in ")]":
            depth -= 1
        elif text in "{}":
            problems.append("maps are not supported")
        elif kind == "number" and not text.lower().startswith("0x") and any(c in text for c in ".eE"):
            problems.append(f"floating-point literal {text}: money and features are integers")
    return tokens, depth != 0


def rewrite(expr: str) -> tuple[str, set[str]]:
    """Check size and vocabulary; return the expression over flat variables and the paths it uses."""
    problems: list[str] = []
    tokens, unbalanced = _tokens(expr, problems)
    out: list[str] = []
    used: set[str] = set()
    i = 0
    n = len(tokens)
    while i < n:
        kind, text = tokens[i]
        prev = tokens[i - 1][1] if i else ""
        nxt = tokens[i + 1][1] if i + 1 < n else ""
        if kind != "ident":
            out.append(text)
            i += 1
            continue
        if prev == ".":
            if text in METHODS and nxt == "(":
                out.append(text)
            else:
                problems.append(f"unknown field or method .{text}")
            i += 1
            continue
        if text in KEYWORDS:
            out.append(text)
            i += 1
            continue
        if nxt == "(":
            if text not in FUNCTIONS:
                problems.append(f"function or macro {text}() is not allowed (allowed: {', '.join(sorted(FUNCTIONS))})")
            out.append(text)
            i += 1
            continue
        if text not in ROOTS:
            problems.append(f"unknown identifier {text!r} (roots: {', '.join(sorted(ROOTS))})")
            i += 1
            continue
        path = text
        j = i + 1
        while (j + 1 < n and tokens[j][1] == "." and tokens[j + 1][0] == "ident"
               and path in _PREFIXES and not (j + 2 < n and tokens[j + 2][1] == "(")):
            path += "." + tokens[j + 1][1]
            j += 2
        if path not in FIELDS:
            problems.append(f"unknown field {path!r}")
        else:
            used.add(path)
            out.append(flat(path))
        i = j
    if unbalanced:
        problems.append("unbalanced brackets")
    if problems:
        raise RuleSetError(Result.RULESET_INVALID, problems)
    return " ".join(out), used


_PROBES: Final = (
    {"int": 1, "bool": False, "string": ""},
    {"int": 7_000, "bool": True, "string": "x"},
)


def _run(program: Any, values: dict[str, Any]) -> tuple[bool, Any]:
    """(ok, value or exception). Catches the engine's Rust panics too (a BaseException)."""
    try:
        return True, program.execute(values)
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as e:
        return False, e


def _one_rule(program: Any, i: int, values: dict[str, Any]) -> Verdict | None:
    """Rule ``i`` alone, read as ``_attribute`` reads it: (i, True) erred, (i, False) matched, None false."""
    ok, got = _run(program, values)
    if not ok or type(got) is not bool:
        return i, True
    return (i, False) if got else None


def _plans(texts: list[str], paths: list[set[str]]) -> list[RulePlan]:
    return [plan_rule(_tokens(text, [])[0], FIELDS, sorted(used)) for text, used in zip(texts, paths, strict=True)]


def _compiled_form(programs: list[Any], plans: list[RulePlan]) -> Callable[..., Verdict]:
    scope: dict[str, Any] = {"_sat": _sat, "_ssat": _ssat, "window_one": risk.window_one,
                             "deviation_bps": deviation_bps, "I64": I64_MAX, "KEY_OUT": KEY_OUT, "KEY_IN": KEY_IN,
                             "KEY_PSP": KEY_PSP, "cel_rule": lambda i, values: _one_rule(programs[i], i, values)}
    return generate(plans, FIELDS, scope)


def _compile_rule(rule: Rule) -> tuple[Any, set[str], str]:
    where = f"rule {rule.id!r}"
    try:
        text, used = rewrite(rule.expr)
    except RuleSetError as e:
        raise RuleSetError(e.result, [f"{where}: {p}" for p in e.problems]) from None
    try:
        program = _cel_compile(text)
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as e:
        raise RuleSetError(Result.RULESET_INVALID, [f"{where}: does not compile: {e}"]) from None
    problems: list[str] = []
    bad = sorted(set(program.functions()) - CEL_FUNCTIONS_ALLOWED)
    if bad:
        problems.append(f"{where}: functions not allowed: {', '.join(bad)}")
    unknown = sorted(set(program.variables()) - {flat(p) for p in used})
    if unknown:
        problems.append(f"{where}: unknown variables: {', '.join(unknown)}")
    if not problems:
        for probe in _PROBES:
            values = {flat(p): probe[FIELDS[p][0]] for p in used}
            ok, value = _run(program, values)
            if ok and not isinstance(value, bool):
                problems.append(f"{where}: must evaluate to a bool, got {type(value).__name__}")
                break
            if not ok and isinstance(value, (TypeError, KeyError)):
                problems.append(f"{where}: type error: {value}")
                break
    if problems:
        raise RuleSetError(Result.RULESET_INVALID, problems)
    return program, used, text


def _sat(v: int) -> int:
    return v if v <= I64_MAX else I64_MAX


def _ssat(v: int) -> int:
    return I64_MAX if v > I64_MAX else I64_MIN if v < I64_MIN else v


def _builder(paths: list[str]) -> Callable[..., dict[str, Any]]:
    """Generate ``build(rec, dra, cra, ts, height, R) -> {flat name: value}`` for exactly these fields.

    Only names from the fixed FIELDS table reach the generated source (never rule text)."""
    needed = {name for name in _PRELUDE if any(name in FIELDS[p][1] for p in paths)}
    if needed & {"_wo", "_dev"}:
        needed.add("_so")
    prelude = [line for name, line in _PRELUDE.items() if name in needed]
    body = ", ".join(f"{flat(p)!r}: {FIELDS[p][1]}" for p in paths)
    src = "def build(rec, dra, cra, ts, height, R):\n"
    for line in prelude:
        src += f"    {line}\n"
    src += f"    return {{{body}}}\n"
    scope: dict[str, Any] = {"I64": I64_MAX, "_sat": _sat, "_ssat": _ssat, "window_features": window_features,
                             "deviation_bps": deviation_bps}
    exec(compile(src, "<rules-activation>", "exec"), scope)
    fn: Callable[..., dict[str, Any]] = scope["build"]
    return fn


NO_MATCH: Final = -1  # verdict index: no rule matched
EVALUATION_FAILED: Final = -2  # verdict index: the rule inputs could not be built (result rule_evaluation_failed)
Verdict = tuple[int, bool]  # (index of the deciding rule, NO_MATCH or EVALUATION_FAILED; whether the rule erred)
GROUP_MAX: Final = 32  # rules folded into one CEL program (the CEL parser refuses deep nesting: ~48 levels)


@dataclass(frozen=True, slots=True)
class _Group:
    """Rules ``start``..``stop - 1`` folded into one program: ``r_start ? start : (… : -1)``."""

    start: int
    stop: int
    program: Any


@dataclass(slots=True)
class CompiledRuleSet:
    ruleset: RuleSet
    canonical: bytes
    hash: bytes
    rules: tuple[Rule, ...]
    programs: tuple[Any, ...]
    groups: tuple[_Group, ...]
    paths: tuple[str, ...]
    build: Callable[..., dict[str, Any]]
    fast: Callable[..., Verdict]  # the compiled form (ledger/rules/fastpath.py)
    program: bytes = b""  # the same plans for the C rules hook (ledger/rules/lowering.py)
    track_out: bool = False
    track_in: bool = False
    track_psp: bool = False
    track_pairs: bool = False
    tolerances: dict[tuple[int, int], Tolerance] = field(default_factory=dict)

    @property
    def active(self) -> bool:
        """True when transfers must be evaluated (there is at least one rule)."""
        return bool(self.rules)

    @property
    def flag_expiry(self) -> bool:
        return self.ruleset.on_expiry == "flag"

    def tolerance(self, ledger: int, psp_id: int) -> Tolerance | None:
        return self.tolerances.get((ledger, psp_id)) or self.tolerances.get((ledger, 0))

    def decide(self, rec: tuple[Any, ...], dra: Any, cra: Any, ts: int, height: int, view: Any) -> Verdict:
        """The verdict on one transfer. Total: nothing the inputs can be makes it raise.

        Building the inputs is deterministic Python over the log; should it fail (a bug, never a
        rule), the verdict is EVALUATION_FAILED, on every replica alike. This is the compiled form;
        ``decide_reference`` is the plain one it must always agree with."""
        try:
            return self.fast(rec, dra, cra, ts, height, view)
        except MemoryError:
            raise
        except Exception:
            return EVALUATION_FAILED, False

    def decide_reference(self, rec: tuple[Any, ...], dra: Any, cra: Any, ts: int, height: int,
                         view: Any) -> Verdict:
        """The verdict from the full activation and the folded CEL programs (the executable spec)."""
        try:
            values = self.build(rec, dra, cra, ts, height, view)
        except MemoryError:
            raise
        except Exception:
            return EVALUATION_FAILED, False
        return self.evaluate(values)

    def evaluate(self, values: dict[str, Any]) -> Verdict:
        """(index of the deciding rule or NO_MATCH, whether it erred). First match in precedence order wins."""
        for group in self.groups:
            ok, got = _run(group.program, values)
            if ok and type(got) is int:
                if got >= 0:
                    return got, False
                continue
            return self._attribute(values, group.start, group.stop)
        return NO_MATCH, False

    def _attribute(self, values: dict[str, Any], start: int, stop: int) -> Verdict:
        """A group erred: evaluate its rules one by one (same order, same semantics) to name the rule."""
        for i in range(start, stop):
            ok, got = _run(self.programs[i], values)
            if not ok or type(got) is not bool:
                return i, True
            if got:
                return i, False
        return NO_MATCH, False  # unreachable with a deterministic engine; keeps the function total


def _fold(texts: list[str], start: int, stop: int) -> str:
    src = "-1"
    for i in range(stop - 1, start - 1, -1):
        src = f"({texts[i]}) ? {i} : ({src})"
    return src


def _groups(rules: tuple[Rule, ...], texts: list[str], size: int = GROUP_MAX) -> tuple[_Group, ...]:
    """Fold the rules into programs of at most ``size`` rules; a group the parser refuses is split."""
    groups: list[_Group] = []
    pending = [(s, min(s + size, len(texts))) for s in range(0, len(texts), size)]
    while pending:
        start, stop = pending.pop(0)
        try:
            groups.append(_Group(start, stop, _cel_compile(_fold(texts, start, stop))))
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException as e:
            if stop - start == 1:
                raise RuleSetError(Result.RULESET_INVALID,
                                   [f"rule {rules[start].id!r}: does not compile: {e}"]) from None
            mid = (start + stop) // 2
            pending[:0] = [(start, mid), (mid, stop)]
    return tuple(groups)


_CACHE: dict[bytes, CompiledRuleSet] = {}


def compile_ruleset(rs: RuleSet) -> CompiledRuleSet:
    """Compile and check every rule; raise RuleSetError (and nothing else) listing the problems of all
    rules, each naming its rule. A pure function: safe to run in a worker thread."""
    canonical = rs.canonical()
    h = ruleset_hash(canonical)
    cached = _CACHE.get(h)
    if cached is not None:
        return cached
    problems: list[str] = []
    result = Result.RULESET_INVALID
    programs: list[Any] = []
    texts: list[str] = []
    used: set[str] = set()
    rule_paths_all: list[set[str]] = []
    for rule in rs.rules:
        try:
            program, rule_paths, text = _compile_rule(rule)
        except RuleSetError as e:
            problems += e.problems
            if e.result == Result.RULESET_TOO_LARGE:
                result = Result.RULESET_TOO_LARGE
            continue
        programs.append(program)
        texts.append(text)
        rule_paths_all.append(rule_paths)
        used |= rule_paths
    if problems:
        raise RuleSetError(result, problems)
    paths = tuple(sorted(used))
    plans = _plans(texts, rule_paths_all)
    compiled = CompiledRuleSet(
        ruleset=rs, canonical=canonical, hash=h, rules=rs.rules, programs=tuple(programs),
        groups=_groups(rs.rules, texts), paths=paths, build=_builder(list(paths)),
        fast=_compiled_form(programs, plans), program=lower(plans),
        track_out=any(p.startswith(("risk.debit.", "risk.amount_", "risk.history")) for p in paths),
        track_in=any(p.startswith("risk.credit.") for p in paths),
        track_psp=any(p.startswith("risk.psp.") for p in paths),
        track_pairs="risk.new_payee" in paths,
        tolerances={(t.ledger, t.psp_id): t for t in rs.tolerances},
    )
    if len(_CACHE) > 64:
        _CACHE.clear()
    _CACHE[h] = compiled
    return compiled


def validate(obj: Any) -> CompiledRuleSet:
    """Parse, check and compile a rule set document: the dry-run/validate path."""
    from ledger.rules.model import parse_ruleset

    return compile_ruleset(parse_ruleset(obj))


def action_of(rule: Rule) -> Action:
    return rule.action
