"""docs/security.md prints the authorization table generated from the code table: they cannot drift."""

from __future__ import annotations

from pathlib import Path

from node.authz import render_matrix

ROOT = Path(__file__).resolve().parents[2]


def test_security_doc_prints_the_code_table() -> None:
    text = (ROOT / "docs" / "security.md").read_text()
    begin = text.index("-->\n", text.index("<!-- matrix:begin")) + len("-->\n")
    end = text.index("<!-- matrix:end -->")
    assert text[begin:end] == render_matrix(), "regenerate the table: python -c 'from node.authz import " \
                                               "render_matrix; print(render_matrix())'"
