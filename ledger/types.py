"""Ledger vocabulary: event kinds, flags, result codes, and the value types of accounts and transfers.

Everything numbered here is on the wire or in the log: numbers are explicit and never reused.
Money is an unsigned 128-bit integer of minor units; no float ever touches an amount.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Final

U128_MAX: Final = (1 << 128) - 1
U64_MAX: Final = (1 << 64) - 1
U32_MAX: Final = (1 << 32) - 1
BATCH_ITEMS_MAX: Final = 8189


class EventKind(enum.IntEnum):
    """Kind of a log entry (leaf). 1 and 2 match the proto ``EventKind``."""

    CREATE_ACCOUNT = 1
    CREATE_TRANSFER = 2
    EXPIRE_PENDING = 3  # a pending transfer reached its timeout (leader time), written by the ledger
    DEPLOY_RULESET = 4  # an operator-signed rule set (docs/rules.md); effective from the next block
    SETTLEMENT_CALLBACK = 5  # a PSP's settlement confirmation, matched against a transfer (reconciliation)
    LEDGER_TRANSFER = 6  # a transfer written by the ledger: rule adjustment or reconciliation residual
    ERASE_SUBJECT = 7  # PII erasure: a subject's commitment + reason (ledger/pii.py); operator only, via the vault
    KEY_ROTATION = 8  # a node's next checkpoint key, signed by its current key (ledger/keyrotation.py)
    AGGREGATE = 11  # running totals per (ledger, psp) proposed by the leader (ledger/aggregates.py)
    OBLIGATION = 9  # a cross-region payment's leg in this region (ledger/netting.py, docs/federation.md)
    SETTLEMENT = 10  # a settlement batch this region joined: clears its clearing accounts (ledger/netting.py)


class AccountFlags(enum.IntFlag):
    NONE = 0
    LINKED = 1 << 0
    DEBITS_MUST_NOT_EXCEED_CREDITS = 1 << 1
    CREDITS_MUST_NOT_EXCEED_DEBITS = 1 << 2
    HISTORY = 1 << 3


ACCOUNT_FLAGS_KNOWN: Final = int(
    AccountFlags.LINKED
    | AccountFlags.DEBITS_MUST_NOT_EXCEED_CREDITS
    | AccountFlags.CREDITS_MUST_NOT_EXCEED_DEBITS
    | AccountFlags.HISTORY
)


class TransferFlags(enum.IntFlag):
    NONE = 0
    LINKED = 1 << 0
    PENDING = 1 << 1
    POST_PENDING_TRANSFER = 1 << 2
    VOID_PENDING_TRANSFER = 1 << 3


TRANSFER_FLAGS_KNOWN: Final = int(
    TransferFlags.LINKED
    | TransferFlags.PENDING
    | TransferFlags.POST_PENDING_TRANSFER
    | TransferFlags.VOID_PENDING_TRANSFER
)


class TransferStatus(enum.IntEnum):
    """State of a stored transfer. Only pending transfers move beyond SINGLE_PHASE/PENDING."""

    SINGLE_PHASE = 0
    PENDING = 1
    POSTED = 2
    VOIDED = 3
    EXPIRED = 4


class Result(enum.IntEnum):
    """Stable result codes, one per outcome, shared by accounts and transfers.

    The precedence in which they are checked is documented in docs/results.md and pinned by tests
    (tests/ledger/test_results.py). Numbers are on the wire and in the log: append, never renumber.
    """

    OK = 0
    LINKED_EVENT_FAILED = 1
    LINKED_EVENT_CHAIN_OPEN = 2
    RESERVED_FIELD = 3
    RESERVED_FLAG = 4
    ID_MUST_NOT_BE_ZERO = 5
    ID_MUST_NOT_BE_INT_MAX = 6
    FLAGS_ARE_MUTUALLY_EXCLUSIVE = 7
    LEDGER_MUST_NOT_BE_ZERO = 8
    CODE_MUST_NOT_BE_ZERO = 9
    # accounts
    ASSET_SCALE_MISMATCH = 20
    EXISTS_WITH_DIFFERENT_FLAGS = 21
    EXISTS_WITH_DIFFERENT_USER_DATA = 22
    EXISTS_WITH_DIFFERENT_LEDGER = 23
    EXISTS_WITH_DIFFERENT_CODE = 24
    EXISTS_WITH_DIFFERENT_ASSET_SCALE = 25
    EXISTS = 26
    # transfers: field validation
    DEBIT_ACCOUNT_ID_MUST_NOT_BE_ZERO = 40
    DEBIT_ACCOUNT_ID_MUST_NOT_BE_INT_MAX = 41
    CREDIT_ACCOUNT_ID_MUST_NOT_BE_ZERO = 42
    CREDIT_ACCOUNT_ID_MUST_NOT_BE_INT_MAX = 43
    ACCOUNTS_MUST_BE_DIFFERENT = 44
    PENDING_ID_MUST_BE_ZERO = 45
    PENDING_ID_MUST_NOT_BE_ZERO = 46
    PENDING_ID_MUST_NOT_BE_INT_MAX = 47
    PENDING_ID_MUST_BE_DIFFERENT = 48
    TIMEOUT_RESERVED_FOR_PENDING_TRANSFER = 49
    AMOUNT_MUST_NOT_BE_ZERO = 50
    # transfers: lookups
    DEBIT_ACCOUNT_NOT_FOUND = 60
    CREDIT_ACCOUNT_NOT_FOUND = 61
    ACCOUNTS_MUST_HAVE_THE_SAME_LEDGER = 62
    TRANSFER_MUST_HAVE_THE_SAME_LEDGER_AS_ACCOUNTS = 63  # "ledger_mismatch"
    PENDING_TRANSFER_NOT_FOUND = 64
    PENDING_TRANSFER_NOT_PENDING = 65
    PENDING_TRANSFER_HAS_DIFFERENT_DEBIT_ACCOUNT_ID = 66
    PENDING_TRANSFER_HAS_DIFFERENT_CREDIT_ACCOUNT_ID = 67
    PENDING_TRANSFER_HAS_DIFFERENT_LEDGER = 68
    PENDING_TRANSFER_HAS_DIFFERENT_CODE = 69
    EXCEEDS_PENDING_TRANSFER_AMOUNT = 70
    PENDING_TRANSFER_HAS_DIFFERENT_AMOUNT = 71
    PENDING_TRANSFER_ALREADY_POSTED = 72
    PENDING_TRANSFER_ALREADY_VOIDED = 73
    PENDING_TRANSFER_EXPIRED = 74
    # transfers: idempotency
    EXISTS_WITH_DIFFERENT_TRANSFER_FLAGS = 80
    EXISTS_WITH_DIFFERENT_DEBIT_ACCOUNT_ID = 81
    EXISTS_WITH_DIFFERENT_CREDIT_ACCOUNT_ID = 82
    EXISTS_WITH_DIFFERENT_AMOUNT = 83
    EXISTS_WITH_DIFFERENT_PENDING_ID = 84
    EXISTS_WITH_DIFFERENT_TRANSFER_USER_DATA = 85
    EXISTS_WITH_DIFFERENT_TIMEOUT = 86
    EXISTS_WITH_DIFFERENT_TRANSFER_CODE = 87
    EXISTS_WITH_DIFFERENT_TRANSFER_LEDGER = 88
    EXISTS_WITH_DIFFERENT_EXTERNAL_REF = 89
    EXISTS_WITH_DIFFERENT_PII_COMMITMENT = 90
    EXISTS_WITH_DIFFERENT_PSP = 91
    TRANSFER_EXISTS = 92
    # transfers: balances
    OVERFLOWS_DEBITS_PENDING = 100
    OVERFLOWS_CREDITS_PENDING = 101
    OVERFLOWS_DEBITS_POSTED = 102
    OVERFLOWS_CREDITS_POSTED = 103
    OVERFLOWS_DEBITS = 104
    OVERFLOWS_CREDITS = 105
    OVERFLOWS_TIMEOUT = 106
    EXCEEDS_CREDITS = 107
    EXCEEDS_DEBITS = 108
    # rules evaluated at commit (docs/rules.md)
    RULE_REJECTED = 120  # a `reject` rule matched; the rule's own code and id are in the leaf's aux (tag 2)
    RULE_ERROR = 121  # the deciding rule failed at run time (type error, overflow, division by zero …)
    RULE_ADJUSTMENT_FAILED = 122  # an `adjust` rule matched but its adjustment transfer could not post
    RULE_EVALUATION_FAILED = 123  # the rule set's inputs could not be built for this transfer; no rule named
    # rule set deployment
    RULESET_BAD_SIGNATURE = 130  # not signed by a configured operator key
    RULESET_INVALID = 131  # not canonical, does not compile/type-check, or references unknown fields
    RULESET_TOO_LARGE = 132  # beyond the size, rule-count or expression limits
    RULESET_VERSION_MUST_INCREASE = 133  # same name and a version not above the active one
    # settlement callbacks (reconciliation)
    CALLBACK_EXISTS = 140  # identical retry of a callback id: no new leaf, original entry returned
    CALLBACK_EXISTS_WITH_DIFFERENT_FIELDS = 141
    # personal data erasure (docs/privacy.md)
    SUBJECT_ALREADY_ERASED = 160  # the commitment was erased by an earlier entry; this one changes nothing
    ERASURE_REASON_UNKNOWN = 161
    CALLBACK_TARGET_MISSING = 142  # neither transfer id nor external ref given
    RECONCILE_TRANSFER_NOT_FOUND = 143
    RECONCILE_PSP_MISMATCH = 144
    RECONCILE_OUTSIDE_TOLERANCE = 145  # exception: observed amount outside the band
    RECONCILE_LATE_AFTER_EXPIRY = 146  # exception: the pending transfer had already expired
    RECONCILE_ALREADY_RECONCILED = 147
    RECONCILE_NOT_RECONCILABLE = 148  # exception: the transfer was voided or is a post/void record
    RECONCILE_RESIDUAL_FAILED = 149  # exception: the residual posting to the rounding account failed
    # checkpoint key rotation (docs/security.md)
    KEY_ROTATION_MALFORMED = 170  # the record does not decode (lengths, key ids, text fields)
    KEY_ROTATION_BAD_SIGNATURE = 171  # the signature does not verify under the old key named in the record
    KEY_ROTATION_NOT_CURRENT_KEY = 172  # signed by a key that is not the node's current key in this log
    # regional aggregates (docs/federation.md)
    AGGREGATE_MALFORMED = 200  # the record does not decode (version, lengths, row order)
    AGGREGATE_OUT_OF_ORDER = 201  # window does not start where the previous aggregate ended, or reaches past itself
    # cross-region obligations and settlement (docs/federation.md)
    OBLIGATION_MALFORMED = 180  # the record does not decode (reserved bytes, role, regions, window, deadline)
    OBLIGATION_EXISTS = 181  # this region already holds an obligation with this id; nothing changes
    OBLIGATION_NOT_PENDING = 182  # RESOLVE of an id that is not pending here, or whose obligation differs
    OBLIGATION_DEADLINE_PASSED = 183  # ACCEPT in a block whose time is at or past the deadline: refused
    OBLIGATION_ACCOUNT_NOT_FOUND = 184  # the payer (debtor region) or payee (creditor region) does not exist
    OBLIGATION_CLEARING_ACCOUNT_NOT_FOUND = 185  # the due-to / due-from account for the counterparty is missing
    OBLIGATION_LEDGER_MISMATCH = 186  # an account of the obligation is on another ledger
    SETTLEMENT_MALFORMED = 190  # the batch does not decode or is not canonical
    SETTLEMENT_EXISTS = 191  # this batch was applied before; nothing changes
    SETTLEMENT_NOT_NETTING = 192  # positions are not the net of the obligations, or do not sum to zero
    SETTLEMENT_OBLIGATION_NOT_OPEN = 193  # an obligation of this region in the batch is not open here, or differs
    SETTLEMENT_NOT_INVOLVED = 194  # no obligation of the batch belongs to this region
    SETTLEMENT_ACCOUNT_NOT_FOUND = 195  # a clearing or settlement account the batch moves is missing

    @property
    def is_success(self) -> bool:
        """True when the event's effect is in the ledger (now or from an earlier identical event)."""
        return self in _SUCCESS


_SUCCESS: Final = frozenset({Result.OK, Result.EXISTS, Result.TRANSFER_EXISTS, Result.CALLBACK_EXISTS})
SUCCESS_CODES: Final = frozenset(int(r) for r in _SUCCESS)


@dataclass(frozen=True, slots=True)
class Account:
    """An account creation event (the 64-byte canonical account record)."""

    id: int
    ledger: int
    code: int
    flags: int = 0
    asset_scale: int = 2
    user_data: int = 0
    reserved: bytes = b""


@dataclass(frozen=True, slots=True)
class Transfer:
    """A transfer event (the 176-byte canonical transfer record)."""

    id: int
    debit_account_id: int
    credit_account_id: int
    amount: int
    ledger: int
    code: int
    flags: int = 0
    pending_id: int = 0
    timeout_s: int = 0
    user_data: int = 0
    psp_id: int = 0
    external_ref: bytes = b""  # up to 32 bytes, zero padded on the wire
    pii_commitment: bytes = b""  # empty or exactly 32 bytes


@dataclass(frozen=True, slots=True)
class AccountBalance:
    """An account as stored: its creation record, balances and creation timestamp."""

    account: Account
    debits_pending: int
    debits_posted: int
    credits_pending: int
    credits_posted: int
    timestamp_ns: int
