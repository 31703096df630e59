"""Batch helpers shared by the account and transfer paths: record slices, PSP signature auxes and
linked chains (all-or-nothing groups of events)."""

from __future__ import annotations

from collections.abc import Callable

from ledger import native
from ledger.apply.scratch import Block, Event
from ledger.codec import KEY_ID_SIZE, RECORD_SIZE, SIGNATURE_SIZE, Batch, psp_signature_aux
from ledger.psp_group import group_auxes
from ledger.types import Result


def signature_auxes(batch: Batch) -> list[bytes]:
    """One aux per record carrying the PSP's signature over it (tag 1), or the proof that its
    signing group was signed (tag 5, group-signed batches), or [] for an unsigned batch."""
    if not batch.signatures:
        return []
    sigs = batch.signatures
    key_id = batch.signer_key_id
    # ledger/_native/group.c builds the same bytes (group hashes with the GIL released) for the shapes
    # validate_batch lets through; anything else stays on the reference
    in_c = native.active() == "native" and len(key_id) == KEY_ID_SIZE and not len(sigs) % SIGNATURE_SIZE
    if batch.sign_group:
        size = RECORD_SIZE[batch.kind]
        if in_c:
            return native.engine().group_auxes(batch.records, size, batch.sign_group, sigs, key_id)  # type: ignore[no-any-return]
        return group_auxes(batch.kind, batch.records, size, batch.sign_group, sigs, key_id)
    if in_c:
        return native.engine().record_auxes(sigs, key_id)  # type: ignore[no-any-return]
    return [psp_signature_aux(key_id, sigs[i : i + SIGNATURE_SIZE]) for i in range(0, len(sigs), SIGNATURE_SIZE)]


def failure_maker(kind: int, records: bytes, size: int, sigs: list[bytes]) -> Callable[[int, int], Event]:
    """``failed(i, result)``: the event of record ``i`` of a batch failing with ``result`` (no effects)."""

    def failed(i: int, result: int) -> Event:
        return Event(kind, result, records[i * size : (i + 1) * size], sigs[i] if sigs else b"", ())

    return failed


def apply_chains(blk: Block, events: list[Event], linked: list[int],
                 apply_one: Callable[[int], Event], failed: Callable[[int, int], Event]) -> None:
    """Apply events; a linked chain (flag LINKED on all but its last event) is all-or-nothing."""
    n = len(linked)
    i = 0
    while i < n:
        if not linked[i]:
            events.append(apply_one(i))
            i += 1
            continue
        end = i
        while end < n and linked[end]:
            end += 1
        if end == n:  # chain never closed
            for j in range(i, n - 1):
                events.append(failed(j, Result.LINKED_EVENT_FAILED))
            events.append(failed(n - 1, Result.LINKED_EVENT_CHAIN_OPEN))
            return
        _apply_chain(blk, events, i, end + 1, apply_one, failed)
        i = end + 1


def _apply_chain(blk: Block, events: list[Event], start: int, stop: int,
                 apply_one: Callable[[int], Event], failed: Callable[[int, int], Event]) -> None:
    blk.undo = []
    chain: list[Event] = []
    failure_at = -1
    for j in range(start, stop):
        ev = apply_one(j)
        chain.append(ev)
        if ev.result != Result.OK and ev.existing is None:
            failure_at = j
            break
    undo, blk.undo = blk.undo, None
    if failure_at < 0:
        events.extend(chain)
        return
    for action in reversed(undo):
        action()
    for j in range(start, stop):
        if j == failure_at:
            events.append(chain[j - start])
        else:
            events.append(failed(j, Result.LINKED_EVENT_FAILED))
