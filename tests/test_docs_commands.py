"""Every command line in the docs runs exactly as written (or is skipped here with its reason).

A *command line* is a line of a fenced code block in README.md, docs/*.md, docker/README.md or
bench/README.md that starts with ``sovledger``, ``.venv/bin/…``, ``python`` or ``make`` (tables
hold synopses with placeholders such as ``HOST:PORT``; they are not commands). Each file's command
lines run in order, in one bash script, inside a fresh user + network + PID namespace: the
documented fixed ports (127.0.0.1:7100, …) are then free whatever else runs on the machine, and
every process a line leaves behind dies with the namespace. The working directory is a temporary
directory with ``.venv``, ``docs``, ``examples`` and ``bench`` linked from the checkout, so the
relative paths in the docs resolve as they do for a reader in the repository root.

Files other than README.md get a region first, as a reader of those pages would have one:
``sovledger cluster up --nodes 3 --port 7100`` and ``sovledger cluster transfer node-1``. They share
one namespace and that one region (started once, not once per file): each file's lines run in their
own ``set -e`` subshell, in file order, and each file's test passes or fails on its own section.
A line ending in ``&`` runs in the background; the next line waits until its ``--listen`` port
accepts connections.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOC_FILES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), ROOT / "docker" / "README.md",
             ROOT / "bench" / "README.md"]
COMMAND = re.compile(r"^(PYTHONPATH=\S+ )?(\.venv/bin/\S+|sovledger|python|make)\s")
FENCE = re.compile(r"^```[^\n]*\n(.*?)^```", re.M | re.S)

# line prefix → why it is not run here (keep short; each says where it is covered instead)
SKIP = {
    "make demo": "the full demo (1M payments, minutes): `make demo` itself; its steps run in README's walkthrough",
    "make test": "the test suite this test belongs to",
    "sovledger node --data DIR": "synopsis with placeholders (DIR, HOST:PORT)",
    "sovledger psp load --target 127.0.0.1:7100[,…]": "synopsis with optional parts in brackets",
    "python -m tests.sim": "the Raft simulator (seconds to minutes a line); tests/sim runs it in `make test`",
    "PYTHONPATH=.:proto .venv/bin/python -m pytest": "runs test suites that `make test` runs",
    ".venv/bin/python -m pytest -q -s tests/faults": "the fault suite: `make test` runs its fast part, "
                                                     "`make test-faults` all of it",
    "sovledger audit disclose ENTRY": "synopsis with placeholders (ENTRY, FILE, ID, HOST:PORT); tests/pii runs it",
    # README "run a node by hand": a foreground server over a CA in /tmp; `cluster up` (TLS) runs the same
    # steps in the other files' region, and tests/security covers `sovledger ca`
    "sovledger ca ": "CA files for hand-run nodes; tests/security runs `sovledger ca` (cluster up uses it too)",
    "sovledger node --data /tmp/n1": "a foreground server (its flags continue on the next line)",
    "sovledger psp load --target 127.0.0.1:7100 --duration 5 --tls-config": "needs the hand-run node above",
    "sovledger keys show --data /tmp/n1": "needs the hand-run node above",
    # docs/federation.md §9: a settlement cycle needs open cross-region obligations in a running federation
    "sovledger settle --federation": "tests/netting/test_federation_e2e.py runs settle and audit settlement as written",
    "sovledger audit settlement BATCH_ID": "synopsis with a placeholder; tests/netting/test_federation_e2e.py runs it",
    "sovledger node … --federation": "synopsis with placeholders (…, FILE)",
}

REGION_SETUP = [".venv/bin/sovledger cluster up --nodes 3 --port 7100", ".venv/bin/sovledger cluster transfer node-1"]

WAIT_PORT = """wait_port() {
  python - "$1" <<'PY'
import socket, sys, time
host, port = sys.argv[1].rsplit(":", 1)
deadline = time.monotonic() + 60
while time.monotonic() < deadline:
    try:
        socket.create_connection((host, int(port)), 1).close()
        sys.exit(0)
    except OSError:
        time.sleep(0.1)
sys.exit(f"nothing listens on {sys.argv[1]} after 60 s")
PY
}
"""


def command_lines(path: Path) -> list[str]:
    out = []
    for block in FENCE.findall(path.read_text()):
        for raw in block.splitlines():
            line = re.sub(r"\s+#\s.*$", "", raw.strip())  # trailing comments explain, they are not run
            if COMMAND.match(line + " "):
                out.append(line)
    return out


def skip_reason(line: str) -> str | None:
    for prefix, reason in SKIP.items():
        if line.startswith(prefix) or line.startswith(".venv/bin/" + prefix):
            return reason
    return None


def script_for(path: Path, lines: list[str]) -> str:
    body = ["set -euo pipefail", WAIT_PORT]
    if path.name != "README.md" or path.parent != ROOT:
        body += _region_setup()
    body += _run_lines(lines)
    return "\n".join(body) + "\n"


def _region_setup() -> list[str]:
    return [f"echo '+ (setup) {c}'\n{c}" for c in REGION_SETUP]


def _run_lines(lines: list[str]) -> list[str]:
    body = []
    for line in lines:
        body.append(f"echo {_quote('+ ' + line)}")
        body.append(line)
        if line.endswith("&"):
            listen = re.search(r"--listen (\S+)", line)
            if listen:
                body.append(f"wait_port {listen.group(1)}")
    return body


def shared_region_script(files: dict[str, list[str]], region: bool = True) -> str:
    """One region for every file but README.md; each file's lines in an own ``set -e`` subshell whose exit
    code is printed after its output (``=== END <file> rc=N``), so one file's failure is that file's alone."""
    body = ["set -euo pipefail", WAIT_PORT, *(_region_setup() if region else []), "set +e"]
    for name, lines in files.items():
        body.append(f"echo {_quote('=== BEGIN ' + name)}")
        body.append("(\nset -euo pipefail\n" + "\n".join(_run_lines(lines)) + "\n)")
        body.append(f"echo \"=== END {name} rc=$?\"")
    return "\n".join(body) + "\n"


def shared_section(stdout: str, name: str) -> tuple[int | None, str]:
    """(exit code, output) of one file's section of the shared run; None when it never ended."""
    begin = stdout.find(f"=== BEGIN {name}\n")
    if begin < 0:
        return None, ""
    end = re.compile(rf"^=== END {re.escape(name)} rc=(\d+)$", re.M).search(stdout, begin)
    if end is None:
        return None, stdout[begin:]
    return int(end.group(1)), stdout[begin:end.start()]


def _quote(text: str) -> str:
    return "'" + text.replace("'", "'\\''") + "'"


def sandbox(tmp_path: Path) -> Path:
    cwd = tmp_path / "repo"
    cwd.mkdir()
    for name in (".venv", "docs", "examples", "bench"):
        (cwd / name).symlink_to(ROOT / name)
    return cwd


def run_in_namespace(script: str, cwd: Path, timeout_s: float) -> subprocess.CompletedProcess[str]:
    (cwd / "commands.sh").write_text(script)
    env = dict(os.environ, PATH=f"{ROOT / '.venv' / 'bin'}:{os.environ.get('PATH', '')}",
               PYTHONPATH=f"{ROOT}:{ROOT / 'proto'}", TERM="dumb", COLUMNS="120")
    env.pop("SOVLEDGER_TARGET", None)
    cmd = ["unshare", "--user", "--map-root-user", "--net", "--pid", "--fork", "--mount-proc",
           "bash", "-c", "ip link set lo up 2>/dev/null || true; exec bash commands.sh"]
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout_s)


def namespaces_available() -> bool:
    if shutil.which("unshare") is None:
        return False
    probe = subprocess.run(["unshare", "--user", "--map-root-user", "--net", "--pid", "--fork", "--mount-proc",
                            "true"], capture_output=True, timeout=30)
    return probe.returncode == 0


def test_every_doc_command_is_either_run_or_skipped_with_a_reason() -> None:
    found = {line for p in DOC_FILES if p.exists() for line in command_lines(p)}
    assert any("cluster up" in line for line in found), "the README walkthrough was not found"
    for prefix in SKIP:  # a stale skip entry hides nothing: drop it when its command leaves the docs
        assert any(line.startswith(prefix) or line.startswith(".venv/bin/" + prefix) for line in found), (
            f"skip entry {prefix!r} matches no command in the docs any more")


def _runnable(path: Path) -> list[str]:
    return [ln for ln in command_lines(path) if skip_reason(ln) is None]


def _require_namespaces() -> None:
    if not namespaces_available():
        pytest.fail("this test needs unprivileged user/network/PID namespaces (`unshare -rn --pid`) so the "
                    "documented fixed ports are free; enable them (kernel.unprivileged_userns_clone=1)")


def test_a_failing_line_in_the_shared_run_fails_its_own_file_only(tmp_path: Path) -> None:
    script = shared_region_script({"docs/a.md": ["true", "(exit 3)", "echo not-reached"],
                                   "docs/b.md": ["echo 42"]}, region=False)
    (tmp_path / "s.sh").write_text(script)
    out = subprocess.run(["bash", "s.sh"], cwd=tmp_path, capture_output=True, text=True, timeout=60).stdout
    code_a, out_a = shared_section(out, "docs/a.md")
    assert code_a == 3 and "not-reached" not in out_a and out_a.rstrip().endswith("+ (exit 3)")
    assert shared_section(out, "docs/b.md") == (0, "=== BEGIN docs/b.md\n+ echo 42\n42\n")
    assert shared_section(out, "docs/c.md") == (None, "")


@pytest.fixture(scope="module")
def shared_region_run(tmp_path_factory: pytest.TempPathFactory) -> subprocess.CompletedProcess[str]:
    """The command lines of every file but README.md, run once against one region (see the module doc)."""
    files = {str(p.relative_to(ROOT)): _runnable(p) for p in DOC_FILES
             if p.exists() and p != ROOT / "README.md"}
    _require_namespaces()
    cwd = sandbox(tmp_path_factory.mktemp("docs-region"))
    return run_in_namespace(shared_region_script({k: v for k, v in files.items() if v}), cwd, timeout_s=900)


@pytest.mark.integration
@pytest.mark.parametrize("path", [p for p in DOC_FILES if p.exists()], ids=lambda p: str(p.relative_to(ROOT)))
def test_doc_commands_run_as_written(path: Path, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    lines = _runnable(path)
    if not lines:
        return  # nothing runnable in this file (every command line is in SKIP, with its reason)
    name = str(path.relative_to(ROOT))
    if path != ROOT / "README.md":
        shared: subprocess.CompletedProcess[str] = request.getfixturevalue("shared_region_run")
        code, out = shared_section(shared.stdout, name)
        assert code == 0, (
            f"{name}: a documented command failed (last '+' line below; rc {code}, region run rc "
            f"{shared.returncode}):\n{(out or shared.stdout)[-4000:]}\n--- stderr ---\n{shared.stderr[-4000:]}")
        return
    _require_namespaces()
    cwd = sandbox(tmp_path)
    result = run_in_namespace(script_for(path, lines), cwd, timeout_s=600)
    assert result.returncode == 0, (
        f"{name}: a documented command failed (last '+' line below):\n"
        f"{result.stdout[-4000:]}\n--- stderr ---\n{result.stderr[-4000:]}")
