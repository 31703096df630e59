"""The PII vault on a TLS region: `sovledger pii` speaks as its certificate, a PSP's psp_id comes from
its certificate (never from the request), and the clients tell what to pass without one."""

from __future__ import annotations

import json

import pytest

from clients.pii import PiiVault, SubjectNotFoundError, VaultCallError
from tests.security.region import Region, cli

pytestmark = pytest.mark.integration


def _tls(region: Region, toml: str) -> list[str]:
    return ["--tls-config", str(region.ca_dir / toml)]


def test_pii_cli_put_erase_get_with_role_certificates(region: Region) -> None:
    put = cli("pii", "put", "0x7a11", "--node", region.leader, "--field", "name=Tls Person", "--json",
              *_tls(region, "psp-2.toml"))
    assert put.returncode == 0, put.stdout + put.stderr
    commitment = json.loads(put.stdout)["commitment"]
    got = cli("pii", "get", "0x7a11", "--node", region.leader, "--json", *_tls(region, "auditor-auditor.toml"))
    assert got.returncode == 0, got.stdout + got.stderr
    assert json.loads(got.stdout)["psp_id"] == 2  # the owner is the certificate's PSP
    as_psp = cli("pii", "erase", "0x7a11", "--node", region.leader, "--reason", "subject_request",
                 *_tls(region, "psp-2.toml"))
    assert as_psp.returncode == 1 and "PERMISSION_DENIED" in as_psp.stderr
    erase = cli("pii", "erase", "0x7a11", "--node", region.leader, "--reason", "subject_request", "--json",
                *_tls(region, "operator-operator.toml"))
    assert erase.returncode == 0, erase.stdout + erase.stderr
    assert json.loads(erase.stdout)["commitment"] == commitment
    gone = cli("pii", "get", "0x7a11", "--node", region.leader, *_tls(region, "psp-2.toml"))
    assert gone.returncode == 1 and "erased" in gone.stderr


def test_a_psp_cannot_claim_another_psp_id(region: Region) -> None:
    tls = region.tls["psp_a"]  # PSP 1
    with PiiVault(region.leader, 15, tls=tls) as v:
        with pytest.raises(VaultCallError, match="not yours") as e:
            v.put(0x7a12, {"name": "Claimed Person"}, psp_id=2)
        assert e.value.code.name == "PERMISSION_DENIED"
        v.put(0x7a12, {"name": "Claimed Person"})  # psp_id 0: its own, from the certificate
        assert v.get(0x7a12).psp_id == 1
    with PiiVault(region.leader, 15, tls=region.tls["psp_b"]) as v:  # naming the owner does not help
        with pytest.raises(VaultCallError, match="not yours") as e:
            v.get(0x7a12, psp_id=1)
        assert e.value.code.name == "PERMISSION_DENIED"
        with pytest.raises(SubjectNotFoundError):  # as if it did not exist
            v.get(0x7a12)


def test_pii_cli_without_a_certificate_is_told_what_to_pass(region: Region) -> None:
    out = cli("pii", "get", "0x7a13", "--node", region.leader, env_extra={"SOVLEDGER_TLS_CONFIG": ""})
    assert out.returncode == 2 and "--tls-config" in out.stderr
    out = cli("audit", "disclose", "1", "--subject", "0x7a13", "--node", region.leader,
              env_extra={"SOVLEDGER_TLS_CONFIG": ""})
    assert out.returncode != 0 and "--tls-config" in out.stdout + out.stderr
