"""One real node process: vault put/get, transfers carrying commitments, disclosure, erasure, screening."""

from __future__ import annotations

from pathlib import Path

import pytest

from clients.client import LedgerClient
from clients.pii import PiiVault, SubjectErasedError, commitment_for, write_pii_file
from clients.pii_disclose import WrongData, check_disclosure
from ledger.note import Verifier
from ledger.pii import ErasureReason, PiiRecord
from ledger.types import Account, EventKind, Result, Transfer
from tests.integration.nodeproc import NodeProcess
from tests.pii.helpers import files_containing

pytestmark = pytest.mark.integration

ALICE = {"name": "Alice Plaintextperson", "email": "alice.pt@example.org", "country": "FR"}


def test_vault_commitment_disclosure_erasure_and_screening(tmp_path: Path) -> None:
    node = NodeProcess(tmp_path / "n1").start()
    try:
        with LedgerClient(node.target) as c, PiiVault(node.target) as v:
            c.wait_ready()
            receipt = v.put(5, ALICE, psp_id=1)
            assert receipt.created and receipt.copies == 1
            assert receipt.commitment == commitment_for(5, ALICE, receipt.salt)
            assert not v.put(5, ALICE, psp_id=1).created  # idempotent
            assert c.create_accounts([Account(id=1, ledger=1, code=1), Account(id=2, ledger=1, code=1)])
            res = c.create_transfers([Transfer(id=10, debit_account_id=1, credit_account_id=2, amount=7, ledger=1,
                                               code=1, pii_commitment=receipt.commitment)])
            assert res[0].result == Result.OK
            index = res[0].log_index
            # disclosure, offline check
            d = v.get(5)
            write_pii_file(tmp_path / "alice.json", d)
            proof = c.inclusion_proof(index=index)
            vkey = [Verifier.parse(c.checkpoint().verifier_key)]
            verdict = check_disclosure(index, bytes(proof.leaf), [bytes(h) for h in proof.proof], proof.note, vkey,
                                       d.record, d.salt)
            assert verdict.commitment == receipt.commitment
            with pytest.raises(WrongData):
                check_disclosure(index, bytes(proof.leaf), [bytes(h) for h in proof.proof], proof.note, vkey,
                                 PiiRecord(5, {**ALICE, "country": "DE"}), d.salt)
            # screening at the edge: nothing of the batch reaches the log
            size = c.checkpoint().tree_size
            with pytest.raises(Exception) as e:
                c.create_transfers([Transfer(id=11, debit_account_id=1, credit_account_id=2, amount=1, ledger=1,
                                             code=1, external_ref=b"alice.pt@example.org")])
            assert "record #0" in str(e.value) and "external_ref" in str(e.value) and "e-mail" in str(e.value)
            assert c.checkpoint().tree_size == size
            # clients cannot submit erasures themselves
            with pytest.raises(Exception, match="cannot be submitted by clients"):
                c.submit_one(EventKind.ERASE_SUBJECT, bytes(48))
            # erasure
            er = v.erase(5, ErasureReason.SUBJECT_REQUEST)
            assert er.result == 0 and er.commitment == receipt.commitment
            with pytest.raises(SubjectErasedError, match="erased"):
                v.get(5)
            again = v.erase  # a second erase is refused: the vault no longer knows the subject
            with pytest.raises(SubjectErasedError):
                again(5, ErasureReason.SUBJECT_REQUEST)
        node.stop()
        needles = [b"Plaintextperson", b"alice.pt@example.org", d.salt]
        assert files_containing(tmp_path / "n1", needles) == []
    finally:
        node.stop()
