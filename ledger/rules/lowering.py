"""A rule set's plans lowered to the flat int64 program the C rules hook evaluates (ledger/_native/rules.c).

Built once per rule-set compile, next to the Python compiled form (ledger/rules/fastpath.py), from the
same ``RulePlan``s. The program is a sequence of int64 words, rule after rule in precedence order::

    rule:     rule index, complex rest (0/1), number of conjuncts, conjunct ...
    conjunct: 0 (bool field), field id, negated (0/1)
            | 1 (compare), operator, terms left, terms right, (sign, field id or -1, literal) per term

Field ids index ``NATIVE_FIELDS`` (the C enum has the same order); operators index ``OPERATORS``.
A side's value is its terms summed left to right in int64, as CEL computes it.

What C decides and what it leaves to Python — exactly the cases the Python compiled form decides
without CEL: a rule matches when every conjunct is true and nothing of the rule is left over for CEL;
a false conjunct makes the rule false. When a rule would need CEL (a conjunct outside the planned
shapes, an int64 overflow in a sum: CEL's error) or an input cannot be read, C hands the whole record
to the Python compiled form, so the verdict is the one it always was. Conjuncts are ordered cheapest
first and a rule with more than ``SIMPLE_MAX`` simple conjuncts keeps only the first ones, as in the
Python form. Among the cheapest, a comparison of one static field with one literal (``is_guard``) comes
first: the C hook takes a rule's first conjunct of that shape as its guard and skips the rule on it
(``rules_eval.c rules_index``). Evaluating it before another cost-0 conjunct cannot change a verdict:
CEL's ``&&`` is false when either side is false, even if the other errs, and an unknown conjunct only
hands the record to the Python form.
"""

from __future__ import annotations

from array import array
from collections.abc import Sequence
from typing import Final

from ledger.rules.fastpath import SIMPLE_MAX, BoolField, Conjunct, RulePlan, conjunct_cost

_ACCOUNT: Final = ("debits_pending", "debits_posted", "credits_pending", "credits_posted", "balance", "flags",
                   "code", "ledger", "user_data")
_WINDOWS: Final = ("count_1m", "count_1h", "count_24h", "sum_1m", "sum_1h", "sum_24h")
NATIVE_FIELDS: Final[tuple[str, ...]] = (
    "transfer.amount", "transfer.ledger", "transfer.code", "transfer.psp_id", "transfer.flags", "transfer.pending",
    "transfer.timeout_s", "transfer.user_data", "psp.id", "block.timestamp_ns", "block.height", "risk.new_payee",
    "risk.amount_ewma", "risk.amount_dev_bps", "risk.history_n",
    *(f"debit.{n}" for n in _ACCOUNT), *(f"credit.{n}" for n in _ACCOUNT),
    *(f"risk.{g}.{n}" for g in ("debit", "credit", "psp") for n in _WINDOWS),
)
FIELD_ID: Final = {path: i for i, path in enumerate(NATIVE_FIELDS)}
OPERATORS: Final = ("<", "<=", ">", ">=", "==", "!=")
# read from the record (or the block's timestamp), never unknown: the fields a guard may compare
STATIC_FIELDS: Final = frozenset(NATIVE_FIELDS[:NATIVE_FIELDS.index("block.height")])
_BOOL, _CMP = 0, 1


def _conjunct(conj: Conjunct, out: list[int]) -> None:
    if isinstance(conj, BoolField):
        out += (_BOOL, FIELD_ID[conj.path], int(conj.negated))
        return
    out += (_CMP, OPERATORS.index(conj.op), len(conj.lhs), len(conj.rhs))
    for sign, path, value in conj.lhs + conj.rhs:
        out += (sign, FIELD_ID[path] if path is not None else -1, value)


def is_guard(conj: Conjunct) -> bool:
    """One static field compared with one literal (or a static bool field): never unknown."""
    if isinstance(conj, BoolField):
        return conj.path in STATIC_FIELDS
    if len(conj.lhs) != 1 or len(conj.rhs) != 1:
        return False
    a, b = conj.lhs[0][1], conj.rhs[0][1]
    return (a in STATIC_FIELDS and b is None) or (a is None and b in STATIC_FIELDS)


def _order(conj: Conjunct) -> tuple[int, bool]:
    return conjunct_cost(conj), not is_guard(conj)


def lower(plans: Sequence[RulePlan]) -> bytes:
    """The program of these plans (one per rule, in precedence order)."""
    out: list[int] = []
    for i, plan in enumerate(plans):
        simple, rest = plan.simple, plan.complex_rest
        if len(simple) > SIMPLE_MAX:
            simple, rest = simple[:SIMPLE_MAX], True
        out += (i, int(rest), len(simple))
        for conj in sorted(simple, key=_order):
            _conjunct(conj, out)
    return array("q", out).tobytes()


def describe(program: bytes) -> list[tuple[int, bool, list[str]]]:
    """(rule index, complex rest, conjuncts as text) per rule: the program read back, for tests and docs."""
    words = array("q")
    words.frombytes(program)
    out: list[tuple[int, bool, list[str]]] = []
    at = 0
    while at < len(words):
        rule, rest, n = words[at:at + 3]
        at += 3
        texts: list[str] = []
        for _ in range(n):
            if words[at] == _BOOL:
                texts.append(("!" if words[at + 2] else "") + NATIVE_FIELDS[words[at + 1]])
                at += 3
                continue
            op, nl, nr = words[at + 1:at + 4]
            terms = [(words[at + 4 + 3 * k], words[at + 5 + 3 * k], words[at + 6 + 3 * k]) for k in range(nl + nr)]
            side = [" ".join(f"{'-' if s < 0 else '+'}{NATIVE_FIELDS[f] if f >= 0 else v}" for s, f, v in part)
                    for part in (terms[:nl], terms[nl:])]
            texts.append(f"{side[0]} {OPERATORS[op]} {side[1]}")
            at += 4 + 3 * (nl + nr)
        out.append((rule, bool(rest), texts))
    return out

