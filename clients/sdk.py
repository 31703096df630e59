"""The PSP streaming SDK's public import path; the code lives in ``clients.psp`` (see its docstring)."""

from clients.psp import (
    AsyncLedgerSDK,
    AsyncSession,
    Clock,
    EngineStats,
    LedgerSDK,
    PreparedTransfer,
    RetryPolicy,
    SdkConfig,
    Session,
    TransferOutcome,
)
from clients.psp.routing import CHANNEL_OPTIONS, MAX_MESSAGE_BYTES

__all__ = [
    "CHANNEL_OPTIONS",
    "MAX_MESSAGE_BYTES",
    "AsyncLedgerSDK",
    "AsyncSession",
    "Clock",
    "EngineStats",
    "LedgerSDK",
    "PreparedTransfer",
    "RetryPolicy",
    "SdkConfig",
    "Session",
    "TransferOutcome",
]
