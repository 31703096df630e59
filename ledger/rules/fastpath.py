"""The compiled form of a rule set: one generated Python function that gives the verdict on a transfer.

Why: the CEL binding converts every activation field from Python on every call (about a microsecond
per field), so a 20-rule set costs tens of microseconds per transfer however cheap its expressions
are. Most rule conditions are plain integer comparisons, whose meaning in CEL is exact and easy to
state; those are decided here in Python, and CEL runs only for what is not.

What is decided in Python — a rule's top-level conjuncts (``a && b && …``, parentheses around a
conjunct with only ``&&`` inside are looked through) of these shapes, over ``int`` fields of
the fixed field table and decimal or hexadecimal int literals (no ``u`` suffix, at most 2^63 − 1):

- ``S op S`` with ``op`` one of ``< <= > >= == !=`` and each side ``S`` a left-to-right chain of
  ``+``/``-`` over fields and literals (a leading ``-`` only before a literal);
- a ``bool`` field, or ``!`` before a ``bool`` field.

Semantics kept exactly:

- CEL int arithmetic is 64-bit signed and errs on overflow; every intermediate sum is checked and,
  when one leaves the range, the conjunct is *unknown* and the rule goes to CEL as a whole;
- CEL's ``&&`` is commutative over errors: one false conjunct makes the rule false even when another
  conjunct errs (``tests/rules/test_compiled_rules.py`` pins this for the installed binding), so
  conjuncts are tested cheapest first (record fields, then account fields, then risk features);
- a rule with a conjunct of any other shape, or with an unknown one, and no false conjunct, is
  evaluated by its own CEL program over its own fields, with the reference's reading: an error or a
  non-bool result names this rule (``rule_error``), ``true`` matches;
- rules are visited in precedence order and the first match wins, as in the folded programs.

Fields are computed lazily, each at most once per transfer, with the same expressions as the
reference activation builder. Only names of the fixed field table, operators from the list above
and validated int literals reach the generated source, never rule text.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final

COMPARE: Final = frozenset({"<", "<=", ">", ">=", "==", "!="})
_BREAKERS: Final = frozenset({"||", "?", ":"})


@dataclass(frozen=True, slots=True)
class Compare:
    """``lhs op rhs``; each side a list of (sign, field path or None, literal)."""

    lhs: tuple[tuple[int, str | None, int], ...]
    op: str
    rhs: tuple[tuple[int, str | None, int], ...]

    def paths(self) -> set[str]:
        return {p for _, p, _ in self.lhs + self.rhs if p is not None}


@dataclass(frozen=True, slots=True)
class BoolField:
    path: str
    negated: bool

    def paths(self) -> set[str]:
        return {self.path}


Conjunct = Compare | BoolField


@dataclass(frozen=True, slots=True)
class RulePlan:
    """A rule as seen by the generator: its simple conjuncts, and whether anything else remains."""

    simple: tuple[Conjunct, ...]
    complex_rest: bool
    paths: tuple[str, ...]  # every field the rule's CEL program reads


def _strip(tokens: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """Remove brackets that enclose the whole token list (as often as they do)."""
    while len(tokens) >= 2 and tokens[0][1] == "(" and tokens[-1][1] == ")":
        depth = 0
        for i, (_, text) in enumerate(tokens):
            if text in ("(", "["):
                depth += 1
            elif text in (")", "]"):
                depth -= 1
            if depth == 0 and i < len(tokens) - 1:
                return tokens
        tokens = tokens[1:-1]
    return tokens


def _split_top(tokens: list[tuple[str, str]], sep: str) -> list[list[tuple[str, str]]] | None:
    """Split at depth 0 on ``sep``; None when a lower-precedence operator is at depth 0."""
    parts: list[list[tuple[str, str]]] = [[]]
    depth = 0
    for tok in tokens:
        text = tok[1]
        if text in ("(", "["):
            depth += 1
        elif text in (")", "]"):
            depth -= 1
        elif depth == 0 and text in _BREAKERS:
            return None
        elif depth == 0 and text == sep:
            parts.append([])
            continue
        parts[-1].append(tok)
    return parts


def _literal(kind: str, text: str) -> int | None:
    if kind != "number" or text[-1] in ("u", "U"):
        return None
    hexadecimal = text.lower().startswith("0x")
    if not hexadecimal and not text.isdigit():
        return None
    value = int(text, 16) if hexadecimal else int(text)
    return value if value <= (1 << 63) - 1 else None


def _side(tokens: list[tuple[str, str]], ints: dict[str, str]) -> tuple[tuple[int, str | None, int], ...] | None:
    """A chain ``t (+|- t)*`` of int fields and literals, or None."""
    terms: list[tuple[int, str | None, int]] = []
    i, sign = 0, 1
    if len(tokens) >= 2 and tokens[0][1] == "-" and tokens[1][0] == "number":
        i, sign = 1, -1
    while i < len(tokens):
        kind, text = tokens[i]
        if kind == "ident" and text in ints and not (i + 1 < len(tokens) and tokens[i + 1][1] in ("(", ".")):
            terms.append((sign, ints[text], 0))
        else:
            value = _literal(kind, text)
            if value is None:
                return None
            terms.append((sign, None, value))
        i += 1
        if i == len(tokens):
            break
        if tokens[i][1] not in ("+", "-") or i + 1 == len(tokens):
            return None
        sign = 1 if tokens[i][1] == "+" else -1
        i += 1
    return tuple(terms) if terms else None


def _classify(tokens: list[tuple[str, str]], ints: dict[str, str], bools: dict[str, str]) -> Conjunct | None:
    if len(tokens) == 1 and tokens[0][0] == "ident" and tokens[0][1] in bools:
        return BoolField(bools[tokens[0][1]], False)
    if len(tokens) == 2 and tokens[0][1] == "!" and tokens[1][0] == "ident" and tokens[1][1] in bools:
        return BoolField(bools[tokens[1][1]], True)
    ops = [i for i, (kind, text) in enumerate(tokens) if kind == "punct" and text in COMPARE]
    if len(ops) != 1 or any(t[1] in ("(", ")", "[", "]") for t in tokens):
        return None
    at = ops[0]
    lhs, rhs = _side(tokens[:at], ints), _side(tokens[at + 1 :], ints)
    if lhs is None or rhs is None:
        return None
    return Compare(lhs, tokens[at][1], rhs)


def _conjuncts(tokens: list[tuple[str, str]], ints: dict[str, str], bools: dict[str, str],
               out: list[Conjunct]) -> bool:
    """Add the simple conjuncts to ``out``; True when some conjunct is not simple."""
    tokens = _strip(tokens)
    parts = _split_top(tokens, "&&")
    if parts is None or any(not p for p in parts):
        return True
    if len(parts) == 1:
        conj = _classify(parts[0], ints, bools)
        if conj is None:
            return True
        out.append(conj)
        return False
    rest = False
    for part in parts:
        rest = _conjuncts(part, ints, bools, out) or rest
    return rest


def plan_rule(tokens: list[tuple[str, str]], fields: dict[str, tuple[str, str]], paths: Sequence[str]) -> RulePlan:
    """``tokens``: the rule rewritten over flat variable names (compiler.rewrite), lexed again."""
    ints = {p.replace(".", "_"): p for p, (t, _) in fields.items() if t == "int"}
    bools = {p.replace(".", "_"): p for p, (t, _) in fields.items() if t == "bool"}
    simple: list[Conjunct] = []
    rest = _conjuncts(tokens, ints, bools, simple)
    return RulePlan(tuple(simple), rest, tuple(sorted(paths)))


def _cost(path: str) -> int:
    if path == "risk.new_payee":
        return 3  # may read the store
    if path.startswith("risk."):
        return 2
    if path.startswith(("debit.", "credit.")):
        return 1
    return 0


_PRELUDE_LAZY: Final = {  # prelude value -> (code computing it, prelude values it needs first)
    "_so": ("R.state(KEY_OUT + rec[1])", ()),  # RiskView.out/inc/psp without the extra call
    "_si": ("R.state(KEY_IN + rec[2])", ()),
    "_sp": ("R.state(KEY_PSP + rec[10].to_bytes(4, 'big'))", ()),
    "_dev": ("deviation_bps(_so, rec[3] | rec[4] << 64)", ("_so",)),
}
_WINDOW_STATE: Final = {"_wo": "_so", "_wi": "_si", "_wp": "_sp"}


class _Gen:
    """Emits the body of the generated function; tracks which values are certainly computed."""

    def __init__(self, fields: dict[str, tuple[str, str]]) -> None:
        self.fields = fields
        self.lines: list[str] = []
        self.names: dict[str, str] = {}  # path -> local variable

    def var(self, path: str) -> str:
        name = self.names.get(path)
        if name is None:
            name = self.names[path] = f"v{len(self.names)}"
        return name

    def _field_expr(self, path: str) -> tuple[str, tuple[str, ...]]:
        """(expression, prelude values it needs). Window fields read one window of one state."""
        expr = self.fields[path][1]
        if path.startswith(("risk.debit.", "risk.credit.", "risk.psp.")):
            group, name = path.split(".")[1:]
            state = {"debit": "_so", "credit": "_si", "psp": "_sp"}[group]
            from ledger.risk import WINDOW_NAMES

            kind, window = name.split("_")
            slot = WINDOW_NAMES.index(window) + (3 if kind == "sum" else 0)
            return f"_sat(window_one({state}, ts, {slot}))", (state,)
        needs = tuple(p for p in ("_dev", "_so") if p in expr)
        return expr, needs

    def ensure(self, path: str, indent: str, known: set[str]) -> None:
        expr, needs = self._field_expr(path)
        for pre in needs:
            self._ensure_prelude(pre, indent, known)
        v = self.var(path)
        if v not in known:
            self.lines.append(f"{indent}if {v} is None: {v} = {expr}")
            known.add(v)

    def _ensure_prelude(self, name: str, indent: str, known: set[str]) -> None:
        code, needs = _PRELUDE_LAZY[name]
        for pre in needs:
            self._ensure_prelude(pre, indent, known)
        if name not in known:
            self.lines.append(f"{indent}if {name} is False: {name} = {code}")
            known.add(name)


def _side_code(gen: _Gen, side: tuple[tuple[int, str | None, int], ...]) -> list[str]:
    """Partial sums, left to right (each one must stay in int64)."""
    out: list[str] = []
    acc = ""
    for sign, path, value in side:
        term = gen.var(path) if path is not None else repr(value)
        if not acc:
            acc = f"-{term}" if sign < 0 else term
        else:
            acc = f"({acc} {'+' if sign > 0 else '-'} {term})"
            out.append(acc)
    if not out:
        out.append(acc)
    return out


SIMPLE_MAX: Final = 40  # simple conjuncts decided in Python per rule (each nests one level)


def conjunct_cost(conj: Conjunct) -> int:
    return max((_cost(p) for p in conj.paths()), default=0)


def _emit_rule(gen: _Gen, i: int, plan: RulePlan, base: str) -> None:
    """Nested ifs, one per simple conjunct (cheapest first); the innermost level matches or asks CEL."""
    known: set[str] = set()
    ind = base
    arith = False
    conjuncts = sorted(plan.simple, key=conjunct_cost)
    if any(_has_arith(c) for c in conjuncts):
        gen.lines.append(f"{ind}u = False")
    for conj in conjuncts:
        for path in sorted(conj.paths(), key=_cost):
            gen.ensure(path, ind, known)
        if isinstance(conj, BoolField):
            gen.lines.append(f"{ind}if {'not ' if conj.negated else ''}{gen.var(conj.path)}:")
        else:
            sums = [x for x in _side_code(gen, conj.lhs) + _side_code(gen, conj.rhs) if x.startswith("(")]
            lhs, rhs = _side_code(gen, conj.lhs)[-1], _side_code(gen, conj.rhs)[-1]
            if sums:  # out of int64: CEL would err, so this conjunct is unknown (the rule goes to CEL)
                arith = True
                ranges = " and ".join(f"I64_MIN <= {x} <= I64_MAX" for x in sums)
                gen.lines.append(f"{ind}if not ({ranges}): u = True")
                gen.lines.append(f"{ind}if u or {lhs} {conj.op} {rhs}:")
            else:
                gen.lines.append(f"{ind}if {lhs} {conj.op} {rhs}:")
        ind += "    "
    if not plan.complex_rest and not arith:
        gen.lines.append(f"{ind}return ({i}, False)")
        return
    if not plan.complex_rest:
        gen.lines.append(f"{ind}if not u: return ({i}, False)")
    for path in sorted(plan.paths, key=_cost):
        gen.ensure(path, ind, known)
    values = ", ".join(f"{p.replace('.', '_')!r}: {gen.var(p)}" for p in plan.paths)
    gen.lines.append(f"{ind}got = cel_rule({i}, {{{values}}})")
    gen.lines.append(f"{ind}if got is not None: return got")


def _has_arith(conj: Conjunct) -> bool:
    return isinstance(conj, Compare) and (len(conj.lhs) > 1 or len(conj.rhs) > 1)


def _key(plan: RulePlan) -> tuple[str, int] | None:
    """(record field, value) when the rule can only match a transfer whose field equals the value."""
    for c in plan.simple:
        if (isinstance(c, Compare) and c.op == "==" and len(c.lhs) == 1 and len(c.rhs) == 1
                and conjunct_cost(c) == 0):
            (s1, p1, v1), (s2, p2, v2) = c.lhs[0], c.rhs[0]
            if p1 is not None and p2 is None:
                return p1, s2 * v2
            if p2 is not None and p1 is None:
                return p2, s1 * v1
    return None


def _segments(plans: Sequence[RulePlan]) -> list[tuple[str | None, list[int]]]:
    """Runs of consecutive rules keyed on the same record field (an index: one set test skips the
    whole run when the field's value is none of theirs); other rules alone (field None)."""
    out: list[tuple[str | None, list[int]]] = []
    for i, plan in enumerate(plans):
        key = _key(plan)
        if key is not None and out and out[-1][0] == key[0]:
            out[-1][1].append(i)
        else:
            out.append((key[0] if key is not None else None, [i]))
    return out


def generate(plans: Sequence[RulePlan], fields: dict[str, tuple[str, str]],
             scope: dict[str, Any]) -> Callable[..., tuple[int, bool]]:
    """``decide(rec, dra, cra, ts, height, R) -> (rule index or -1, errored)``. ``scope`` supplies
    ``cel_rule(i, values)``, ``_sat``, ``_ssat``, ``window_one``, ``deviation_bps``, ``I64`` and the
    risk key prefixes ``KEY_OUT``, ``KEY_IN``, ``KEY_PSP``."""
    gen = _Gen(fields)
    plans = [p if len(p.simple) <= SIMPLE_MAX else RulePlan(p.simple[:SIMPLE_MAX], True, p.paths) for p in plans]
    sets: dict[str, frozenset[int]] = {}
    for field_path, members in _segments(plans):
        if field_path is None or len(members) < 2:
            for i in members:
                gen.lines.append(f"    # rule {i}")
                _emit_rule(gen, i, plans[i], "    ")
            continue
        name = f"K{len(sets)}"
        keys = [_key(plans[i]) for i in members]
        sets[name] = frozenset(k[1] for k in keys if k is not None)
        gen.lines.append(f"    # rules {members[0]}..{members[-1]}: keyed on {field_path}")
        gen.lines.append(f"    if {fields[field_path][1]} in {name}:")
        for i in members:
            _emit_rule(gen, i, plans[i], "        ")
    head = ["def decide(rec, dra, cra, ts, height, R):"]
    head += [f"    {v} = None" for v in gen.names.values()]
    head += [f"    {p} = False" for p in _PRELUDE_LAZY if any(p in line for line in gen.lines)]
    src = "\n".join(head + gen.lines + ["    return (-1, False)", ""])
    env = dict(scope, I64_MIN=-(1 << 63), I64_MAX=(1 << 63) - 1, **sets)
    exec(compile(src, "<rules-decide>", "exec"), env)
    fn: Callable[..., tuple[int, bool]] = env["decide"]
    fn.__doc__ = src
    return fn
