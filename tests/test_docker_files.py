"""docker/ cannot be built here; check it statically so it cannot silently rot."""

from __future__ import annotations

from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def test_compose_regions_are_self_contained() -> None:
    compose = yaml.safe_load((ROOT / "docker" / "compose.yaml").read_text())
    services = compose["services"]
    regions: dict[str, set[str]] = {}
    for name, svc in services.items():
        cmd = svc["command"]
        if "--node-id" not in cmd:  # the per-region CA services (test below)
            continue
        region = cmd[cmd.index("--region") + 1]
        node_id = cmd[cmd.index("--node-id") + 1]
        assert svc["volumes"] and svc["volumes"][0].endswith(":/data"), name
        assert node_id not in regions.setdefault(region, set()), f"duplicate node id {node_id} in {region}"
        regions[region].add(node_id)
        peers = cmd[cmd.index("--peers") + 1].split(",")
        for peer in peers:
            host = peer.split("=")[1].split(":")[0]
            peer_cmd = services[host]["command"]
            assert peer_cmd[peer_cmd.index("--region") + 1] == region, f"{name} peers across regions"
    assert all(len(ids) in (3, 5) for ids in regions.values())


def test_dockerfile_runs_the_node_as_non_root_with_a_health_check() -> None:
    text = (ROOT / "docker" / "Dockerfile").read_text()
    assert "USER sovledger" in text and "HEALTHCHECK" in text and 'VOLUME ["/data"]' in text
    for pkg in ("node", "consensus", "ledger", "clients", "sovledger", "proto"):
        assert f"COPY {pkg} {pkg}" in text


def test_every_node_speaks_tls_with_certificates_from_its_own_regions_ca() -> None:
    services = yaml.safe_load((ROOT / "docker" / "compose.yaml").read_text())["services"]
    for name, svc in services.items():
        cmd = svc["command"]
        if "--node-id" not in cmd:
            continue
        assert "--insecure" not in cmd, name
        node_id = cmd[cmd.index("--node-id") + 1]
        ca_service = "ca-" + name.split("-")[0]
        assert cmd[cmd.index("--tls-cert") + 1] == f"/certs/node-{node_id}.pem", name
        assert cmd[cmd.index("--tls-key") + 1] == f"/certs/node-{node_id}.key", name
        certs_volume = next(v for v in svc["volumes"] if v.endswith(":/certs:ro"))
        assert f"{certs_volume.split(':')[0]}:/certs" in services[ca_service]["volumes"], name
        script = services[ca_service]["command"][0]
        region = cmd[cmd.index("--region") + 1]
        assert f"--region {region}" in script and f"--san {name.split('-')[0]}-$$n" in script, name
        assert svc["depends_on"][ca_service]["condition"] == "service_completed_successfully"


def test_every_node_advertises_its_service_name_and_is_published() -> None:
    services = yaml.safe_load((ROOT / "docker" / "compose.yaml").read_text())["services"]
    host_ports: list[str] = []
    for name, svc in services.items():
        cmd = svc["command"]
        if "--node-id" not in cmd:
            continue  # the CA services
        assert cmd[cmd.index("--advertise") + 1] == f"{name}:7100", f"{name} must advertise its service name"
        ports = svc.get("ports", [])
        assert any(p.endswith(":7100") for p in ports), f"{name} is not published"
        host_ports += [p.split(":")[0] for p in ports]
    assert len(host_ports) == len(set(host_ports)), "two services publish the same host port"


def test_dockerignore_keeps_local_state_out_of_the_image() -> None:
    ignored = (ROOT / ".dockerignore").read_text().split()
    for entry in (".venv", ".git", ".sovledger", "**/node.key"):
        assert entry in ignored


def test_both_regions_are_federated_from_one_config() -> None:
    services = yaml.safe_load((ROOT / "docker" / "compose.yaml").read_text())["services"]
    script = services["federation"]["command"][0]
    regions = set()
    for name, svc in services.items():
        cmd = svc["command"]
        if "--node-id" not in cmd:
            continue
        region, node_id = cmd[cmd.index("--region") + 1], cmd[cmd.index("--node-id") + 1]
        regions.add(region)
        assert cmd[cmd.index("--federation") + 1] == "/federation/federation.json", name
        assert "federation:/federation:ro" in svc["volumes"], name
        assert svc["depends_on"]["federation"]["condition"] == "service_completed_successfully", name
        assert f"--node {node_id}={name}:7100=/nodes/{name}" in script, f"{name} missing from the federation config"
        assert f"{name}:/nodes/{name}" in services["federation"]["volumes"], name
    assert all(f"--region {r}" in script and f"--ca {r}-ca.pem" in script for r in regions) and len(regions) == 2
