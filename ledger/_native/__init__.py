"""C sources of the native engine (engine.c); the compiled module is ``ledger._native._engine``.
Load it through ``ledger.native`` only."""
