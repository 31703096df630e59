"""Every client speaks TLS with a client certificate: `psp load` (the SDK) and the rules CLI against
a `cluster up` region, with the config files `sovledger ca issue` wrote."""

from __future__ import annotations

import json

import pytest

from tests.security.region import Region, cli

pytestmark = pytest.mark.integration


def test_psp_load_speaks_as_its_certificate(region: Region) -> None:
    out = cli("psp", "load", "--target", ",".join(region.targets), "--rate", "2000", "--duration", "1",
              "--accounts", "50", "--batch", "500", "--json", "--tls-config", str(region.ca_dir / "psp-2.toml"))
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert report["sent"] == report["acked"] > 500 and report["results"] == {"ok": report["acked"]}


def test_clients_without_a_certificate_are_told_what_to_pass(region: Region) -> None:
    out = cli("psp", "load", "--target", region.leader, "--duration", "1", "--json",
              env_extra={"SOVLEDGER_TLS_CONFIG": ""})
    assert out.returncode != 0 and "--tls-config" in out.stderr


def test_rules_cli_with_operator_and_auditor_certificates(region: Region) -> None:
    op = cli("rules", "list", "--target", region.leader, "--tls-config", str(region.ca_dir / "operator-operator.toml"))
    assert op.returncode == 0, op.stderr
    aud = cli("rules", "report", "--target", region.leader, "--tls-config", str(region.ca_dir / "auditor-auditor.toml"))
    assert aud.returncode == 0, aud.stderr
    psp = cli("rules", "list", "--target", region.leader, "--tls-config", str(region.ca_dir / "psp-1.toml"))
    assert psp.returncode != 0 and "PERMISSION_DENIED" in psp.stderr + psp.stdout


def test_auditor_cli_with_the_auditor_certificate(region: Region) -> None:
    trust = region.data / "trust.json"
    tls = ["--tls-config", str(region.ca_dir / "auditor-auditor.toml")]
    init = cli("audit", "trust", "init", "--node", region.leader, "--trust", str(trust), *tls)
    assert init.returncode == 0, init.stdout + init.stderr
    verify = cli("audit", "verify", "--node", region.leader, "--trust", str(trust), "--full", *tls)
    assert verify.returncode == 0, verify.stdout + verify.stderr
    as_psp = cli("audit", "verify", "--node", region.leader, "--trust", str(trust),
                 "--tls-config", str(region.ca_dir / "psp-1.toml"))
    assert as_psp.returncode != 0 and "PERMISSION_DENIED" in as_psp.stdout + as_psp.stderr
