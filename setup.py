"""Build the optional native extensions (ledger/_native/engine.c; risk.c for ledger/risk.py, with rules.c
and rules_eval.c: the C rules hook) with the machine's C compiler.

Everything else about the package lives in pyproject.toml. The extension is ``optional``: if there is
no compiler or the build fails, ``pip install -e .`` still succeeds and the ledger runs on the Python
engine (ledger/native.py reports which engine is active).
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "ledger._native._engine",
            sources=["ledger/_native/engine.c", "ledger/_native/apply.c", "ledger/_native/seal.c",
                     "ledger/_native/group.c"],
            extra_compile_args=["-O3", "-std=c11", "-Wall"],
            depends=["ledger/_native/slots.h", "ledger/_native/keyed_hash.h"],
            optional=True,
        ),
        Extension(  # risk window arithmetic (ledger/risk.py), the same fallback rule
            "ledger._native._risk",
            sources=["ledger/_native/risk.c", "ledger/_native/rules.c", "ledger/_native/rules_eval.c",
                     "ledger/_native/risk_table.c", "ledger/_native/risk_table_type.c",
                     "ledger/_native/risk_journal.c", "ledger/_native/pair_runs.c"],
            extra_compile_args=["-O2", "-std=gnu11", "-Wall"],
            depends=["ledger/_native/risk_core.h", "ledger/_native/rules.h", "ledger/_native/risk_table.h",
                     "ledger/_native/keyed_hash.h"],
            optional=True,
        ),
    ]
)
