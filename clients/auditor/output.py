"""Console output of the audit commands: a rich table for people, one JSON object with ``--json``."""

from __future__ import annotations

import json
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from clients.auditor.failures import AuditFailure


class Out:
    def __init__(self, as_json: bool) -> None:
        self.json = as_json
        self.console = Console(stderr=False, highlight=False, soft_wrap=True)
        self.err = Console(stderr=True, highlight=False)

    def warn(self, text: str) -> None:
        self.err.print(f"[bold yellow]WARNING[/]: {text}")

    def progress(self, total: int, label: str) -> Progress:
        return Progress(TextColumn(label), BarColumn(), MofNCompleteColumn(), TextColumn("entries"),
                        TimeRemainingColumn(), console=self.err, transient=True,
                        disable=self.json or not self.err.is_terminal or total < 50_000)

    def result(self, title: str, rows: list[tuple[str, str]], data: dict[str, Any]) -> None:
        if self.json:
            print(json.dumps({"ok": True, **data}, indent=2, default=str))
            return
        t = Table(title=title, show_header=True, header_style="bold")
        t.add_column("check")
        t.add_column("result", overflow="fold")
        for k, v in rows:
            t.add_row(k, v)
        self.console.print(t)

    def failure(self, e: AuditFailure) -> int:
        if self.json:
            print(json.dumps({"ok": False, "error": e.to_json()}, indent=2, default=str))
            return e.exit_code
        t = Table(title=f"[bold red]AUDIT FAILED[/] ({e.kind}, exit {e.exit_code})", show_header=False)
        t.add_column("key", style="bold")
        t.add_column("value", overflow="fold")
        t.add_row("problem", e.message)
        for k, v in e.data.items():
            if k in ("note", "trusted_note", "note_a", "note_b", "leaf_a", "leaf_b"):
                continue
            t.add_row(k, v.hex() if isinstance(v, bytes) else str(v))
        self.console.print(t)
        for k in ("trusted_note", "note", "note_a", "note_b"):
            if isinstance(e.data.get(k), str):
                self.console.print(f"[bold]{k.replace('_', ' ')}[/]:")
                self.console.print(e.data[k], markup=False)
        for k in ("leaf_a", "leaf_b"):
            if isinstance(e.data.get(k), dict):
                self.console.print(f"[bold]{k.replace('_', ' ')}[/]: {json.dumps(e.data[k])}", markup=False)
        return e.exit_code

