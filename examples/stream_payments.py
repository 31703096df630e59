"""Stream micro-payments to a sovledger region with the PSP SDK: journal, signing, a session.

    sovledger node --data /tmp/n1 --listen 127.0.0.1:7100 &
    .venv/bin/python examples/stream_payments.py --target 127.0.0.1:7100 --payments 20000

With --sign every transfer is signed with a PSP key the nodes accept: by default the one
`sovledger cluster up` wrote to .sovledger/cluster/psp.key (its nodes are started with it), and
--target defaults to that region's nodes.

Run it twice with the same --journal: the second run first recovers whatever the first left
unresolved (kill -9 it mid-way to see that nothing is ever duplicated).
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "proto")]

from clients.connect import ClientTls  # noqa: E402
from clients.ids import new_id  # noqa: E402
from clients.sdk import LedgerSDK, SdkConfig  # noqa: E402
from clients.sdk_errors import OutcomeUnknownError, TransferFailed  # noqa: E402
from clients.targets import default_targets  # noqa: E402
from clients.workload import micro_amount  # noqa: E402
from ledger.note import Signer  # noqa: E402
from ledger.types import Account, Transfer  # noqa: E402

USD = 840


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--target", default=default_targets(),
                    help="region nodes HOST:PORT[,…] (default: the `cluster up` region, else 127.0.0.1:7100)")
    ap.add_argument("--payments", type=int, default=20_000)
    ap.add_argument("--accounts", type=int, default=100)
    ap.add_argument("--journal", default="psp-journal.sqlite")
    ap.add_argument("--sign", action="store_true", help="sign each transfer with the PSP key of --psp-key")
    ap.add_argument("--psp-key", default=".sovledger/cluster/psp.key",
                    help="PSP signer key file the nodes know (default: the one `sovledger cluster up` wrote)")
    args = ap.parse_args()

    signer = None
    if args.sign:
        key = Path(args.psp_key)
        if not key.exists():
            print(f"no PSP key at {key}: start a region with `sovledger cluster up` (its nodes accept the key it "
                  "writes there) or pass --psp-key FILE of a key the nodes were started with (--psp-keys)",
                  file=sys.stderr)
            return 2
        signer = Signer.parse(key.read_text())
    config = SdkConfig(batch_size_max=2000, batch_delay_s=0.005, window_items=10_000)
    # TLS: the local cluster's PSP certificate when `sovledger cluster up` made one (or $SOVLEDGER_TLS_CONFIG)
    tls_file = os.environ.get("SOVLEDGER_TLS_CONFIG") or ".sovledger/cluster/ca/psp-1.toml"
    tls = ClientTls.from_file(tls_file) if Path(tls_file).exists() else None
    with LedgerSDK(args.target.split(","), journal=args.journal, signer=signer, config=config, tls=tls) as sdk:
        # 1. settle what a previous (crashed) run left unresolved, with the same ids
        recovered = sdk.recover()
        print(f"recovered {len(recovered)} payment(s) from the journal")

        # 2. accounts (idempotent: `exists` is fine)
        sdk.ensure_accounts([Account(id=i, ledger=USD, code=1) for i in range(1, args.accounts + 1)])

        # 3. one payment, synchronously, raising on a failing result code
        (first,) = sdk.submit([Transfer(id=new_id(), debit_account_id=1, credit_account_id=2, amount=150,
                                        ledger=USD, code=1, psp_id=1)], raise_on_failure=True)
        print(f"first payment: log index {first.log_index}, block {first.block}")

        # 4. a stream: send() blocks when the window is full; outcomes arrive on futures
        rng = random.Random()
        results: Counter[str] = Counter()
        t0 = time.monotonic()
        with sdk.session() as session:
            futures = []
            for _ in range(args.payments):
                dr, cr = rng.sample(range(1, args.accounts + 1), 2)
                futures.append(session.send(Transfer(id=new_id(), debit_account_id=dr, credit_account_id=cr,
                                                     amount=micro_amount(rng), ledger=USD, code=1,
                                                     psp_id=rng.randint(1, 4))))
        for f in futures:  # the session's close() flushed: every future is done
            try:
                results[f.result().raise_for_result().result.name] += 1
            except TransferFailed as e:
                results[e.result.name] += 1
            except OutcomeUnknownError:
                results["unknown (recover() will settle it)"] += 1
        elapsed = time.monotonic() - t0
        print(f"{args.payments} payments in {elapsed:.2f} s ({args.payments / elapsed:,.0f}/s): {dict(results)}")
        print(f"journal: {sdk.journal.counts() if sdk.journal else {}}")
        if signer:
            print(f"signed with PSP key {signer.verifier.to_string()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
