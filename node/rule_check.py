"""Rule-set documents from clients: parsed with a clear error for hostile nesting, validated in a
worker process (``validate_serialized`` takes and returns bytes so it crosses a process boundary).
Kept small so a worker process imports little."""

from __future__ import annotations

import json
from typing import Any

from ledger.rules import RuleSetError, validate
from node.errors import BadRequest
from sovledger_pb import ledger_pb2 as pb

NOT_JSON_RESULT = 131


def load_document(document: bytes) -> Any:
    """Parse a client's JSON document; a document nested too deeply is a clear INVALID_ARGUMENT."""
    try:
        return json.loads(document)
    except RecursionError:
        raise BadRequest("the rule-set document nests too deeply to be a rule set (JSON arrays/objects "
                         "inside each other thousands of levels deep)") from None


def validate_serialized(document: bytes) -> bytes:
    """A serialized ValidateRuleSetResponse for ``document``; raises BadRequest for hostile input."""
    try:
        compiled = validate(load_document(document))
    except RuleSetError as e:
        answer = pb.ValidateRuleSetResponse(ok=False, result=e.result, problems=e.problems)
    except ValueError as e:
        answer = pb.ValidateRuleSetResponse(ok=False, result=NOT_JSON_RESULT, problems=[f"not JSON: {e}"])
    else:
        answer = pb.ValidateRuleSetResponse(ok=True, canonical=compiled.canonical, hash=compiled.hash)
    return answer.SerializeToString()
