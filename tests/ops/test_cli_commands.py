"""The ``sovledger`` command line registers a command's module only when that command is named
(sovledger/cli.py ``_REGISTRARS``): the table must name every module's commands exactly, help and an
unknown command still see all of them, and a named command does not import the others."""

from __future__ import annotations

import argparse
import importlib
import subprocess
import sys

from sovledger import cli


def _choices(parser: argparse.ArgumentParser) -> list[str]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return list(action.choices)
    raise AssertionError("no subcommands")


def test_the_table_names_exactly_what_each_module_registers() -> None:
    for module, names in cli._REGISTRARS:
        p = argparse.ArgumentParser()
        sub = p.add_subparsers()
        importlib.import_module(module).register(sub)
        assert tuple(sub.choices) == names, module
    everything = _choices(cli.build_parser())
    listed = [n for _, names in cli._REGISTRARS for n in names]
    assert sorted(everything) == sorted([*cli._BUILT_IN, *listed])
    assert len(everything) == len(set(everything))


def test_a_named_command_builds_only_its_own_part() -> None:
    for _, names in cli._REGISTRARS:
        for name in names:
            got = _choices(cli.build_parser([name, "--help"]))
            assert sorted(got) == sorted([*cli._BUILT_IN, *names]), name
    assert sorted(_choices(cli.build_parser(["node", "--data", "x"]))) == sorted(cli._BUILT_IN)
    assert len(_choices(cli.build_parser(["no-such-command"]))) == len(_choices(cli.build_parser()))


def test_a_named_command_does_not_import_the_others() -> None:
    code = ("import sys\nfrom sovledger.cli import build_parser\n"
            "build_parser(['tail', '--help'])\n"
            "print(sorted(m for m in ('clients.auditor.cli', 'sovledger.cluster', 'clients.psp_load', 'clients.tail')"
            " if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True).stdout
    assert out.strip() == "['clients.tail']"


def test_an_unknown_command_is_a_usage_error_listing_every_command() -> None:
    r = subprocess.run([sys.executable, "-m", "sovledger", "no-such-command"], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 2
    for _, names in cli._REGISTRARS:
        for name in names:
            assert name in r.stderr
