"""Vault catch-up in pages (node/vault_service.py ``PeerCopies.pull``, ``VaultPeer.Inventory``): real vault
files on both sides, the peer service on 127.0.0.1, pages far smaller than the vault, free slots left by
erasures in the middle of the key file, and a key file read back from disk."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import pytest

from ledger.pii import ErasureReason
from node import vault_service
from node.vault import Vault
from node.vault_service import PeerCopies, VaultPeerService
from sovledger_pb import vault_pb2 as vpb
from sovledger_pb import vault_pb2_grpc as vpb_grpc

NOT_ERASED: dict[bytes, tuple[int, int]] = {}


def _fields(i: int) -> dict[str, str]:
    return {"name": f"Subject {i}", "country": "PL"}


def _source(path: Path) -> set[int]:
    """A vault of 40 subjects with 7 erased in the middle and 3 new ones in their freed slots; then closed."""
    v = Vault(path, NOT_ERASED.get)
    sealed = {i: v.put(i, _fields(i), psp_id=3)[0] for i in range(100, 140)}
    for i in (101, 105, 106, 107, 120, 121, 139):
        assert v.shred(sealed[i].commitment, ErasureReason.SUBJECT_REQUEST, 1) == i
    for i in (500, 501, 502):
        v.put(i, _fields(i), psp_id=4)
    v.close()
    return (set(range(100, 140)) - {101, 105, 106, 107, 120, 121, 139}) | {500, 501, 502}


def test_inventory_pages_and_catch_up(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    expected = _source(tmp_path / "a")
    a = Vault(tmp_path / "a", NOT_ERASED.get)  # the key file read back from disk
    b = Vault(tmp_path / "b", NOT_ERASED.get)
    b.put(110, _fields(110), psp_id=3)  # b already has one subject (the same record would be refused)
    monkeypatch.setattr(vault_service, "INVENTORY_PAGE", 3)  # pages of 3 subjects: many pages

    async def main() -> None:
        server = grpc.aio.server()
        vpb_grpc.add_VaultPeerServicer_to_server(VaultPeerService(a), server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        address = f"127.0.0.1:{port}"
        try:
            async with grpc.aio.insecure_channel(address) as ch:
                stub = vpb_grpc.VaultPeerStub(ch)
                seen: list[int] = []
                after, pages = b"", 0
                while True:
                    page = await stub.Inventory(vpb.InventoryRequest(after=after, limit=100), timeout=10)
                    assert len(page.subject_ids) <= 3  # the server's page size caps the request's limit
                    seen += [int.from_bytes(s, "little") for s in page.subject_ids]
                    pages += 1
                    if not page.next:
                        break
                    assert page.next > after
                    after = page.next
                assert pages >= len(expected) // 3 and sorted(seen) == sorted(expected)  # each subject once
                with pytest.raises(grpc.aio.AioRpcError) as bad:
                    await stub.Inventory(vpb.InventoryRequest(after=b"\x01\x02\x03"), timeout=10)
                assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            copies = PeerCopies(b, lambda: [address])
            try:
                assert await copies.pull() == len(expected) - 1  # all but the one b had
                assert await copies.pull() == 0  # nothing left to take
            finally:
                await copies.stop()
        finally:
            await server.stop(0)

    asyncio.run(main())
    for i in expected:
        assert b.disclose(i).record == a.disclose(i).record
    assert b.holds(110) and not b.holds(101) and not b.holds(139)
    a.close()
    b.close()
