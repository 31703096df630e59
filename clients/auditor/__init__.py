"""The auditor: verifies what a region's nodes signed and served, locally (docs/auditor.md).

Pure modules (no I/O; imported by tests, benches and the demo):
    failures   typed failures and their exit codes
    replay     ``LogVerifier``: full-log replay (leaves, chain, tree, headers, balances, PSP signatures)
    checks     signed checkpoints, append-only against the trust store, accounts, single proofs
    export     the offline export file format
    trust      the local trust store (atomic JSON file)
I/O and commands:
    remote     the one connection factory, a node wrapper with typed errors, proof-based helpers
    output     rich tables / JSON
    verify     ``audit verify`` (online and ``--file``)
    commands   ``audit trust …``, ``audit prove``, ``audit export``
    compare    ``audit compare`` and fork evidence
    cli        argparse: ``register`` (used by ``sovledger``) and ``main`` (``python -m clients.auditor``)
"""
