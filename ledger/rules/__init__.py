"""Rules evaluated at commit: rule sets (model), their compilation to CEL (compiler). docs/rules.md."""

from ledger.rules.compiler import CompiledRuleSet, compile_ruleset, validate
from ledger.rules.model import (
    Action,
    Rule,
    RuleSet,
    RuleSetError,
    Tolerance,
    canonical_json,
    parse_canonical,
    parse_ruleset,
    ruleset_hash,
    signing_message,
)

__all__ = [
    "Action", "CompiledRuleSet", "Rule", "RuleSet", "RuleSetError", "Tolerance", "canonical_json",
    "compile_ruleset", "parse_canonical", "parse_ruleset", "ruleset_hash", "signing_message", "validate",
]
