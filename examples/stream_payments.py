"""Stream micro-payments to a sovledger region with the PSP SDK: journal, signing, a session.

    .venv/bin/sovledger cluster up --nodes 3 --port 7100
    .venv/bin/python examples/stream_payments.py --payments 20000 --sign

The region speaks TLS: the script presents a PSP certificate (--tls-config FILE, or
$SOVLEDGER_TLS_CONFIG, else the one `cluster up` issued, .sovledger/cluster/ca/psp-1.toml) and acts
as that certificate's PSP: its psp_id on every transfer, and only accounts that PSP owns (the
psp_id in the account id's top 32 bits, ledger/ownership.py; docs/security.md). --insecure talks
plaintext to nodes started with --insecure (as PSP 1, same account ids).

With --sign every transfer is signed with a PSP key the nodes accept: by default the one
`sovledger cluster up` wrote to .sovledger/cluster/psp.key (its nodes are started with it), and
--target defaults to that region's nodes.

Run it twice with the same --journal: the second run first recovers whatever the first left
unresolved (kill -9 it mid-way to see that nothing is ever duplicated).
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "proto")]

from clients.connect import ClientTls, TlsConfigError, add_tls_flags, tls_from_args  # noqa: E402
from clients.ids import new_id  # noqa: E402
from clients.sdk import LedgerSDK, SdkConfig  # noqa: E402
from clients.sdk_errors import OutcomeUnknownError, TransferFailed  # noqa: E402
from clients.targets import default_targets  # noqa: E402
from clients.workload import micro_amount  # noqa: E402
from ledger.note import Signer  # noqa: E402
from ledger.ownership import account_id_for  # noqa: E402
from ledger.types import Account, Transfer  # noqa: E402

USD = 840
INSECURE_PSP_ID = 1  # who the script claims to be without a certificate (plaintext nodes check no owner)


def client_tls(args: argparse.Namespace) -> tuple[ClientTls | None, int]:
    """The PSP certificate to present (None with --insecure) and the psp_id to act as."""
    tls = tls_from_args(args, "psp-1.toml")
    return tls, (tls.psp_id() if tls is not None else INSECURE_PSP_ID)


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
    add_tls_flags(ap)
    args = ap.parse_args()
    try:
        tls, psp = client_tls(args)
    except TlsConfigError as e:
        print(f"{e} (or run `sovledger cluster up` here: it issues .sovledger/cluster/ca/psp-1.toml)",
              file=sys.stderr)
        return 2
    accounts = [account_id_for(psp, n) for n in range(1, args.accounts + 1)]  # this PSP's own accounts

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
    with LedgerSDK(args.target.split(","), journal=args.journal, signer=signer, config=config, tls=tls) as sdk:
        # 1. settle what a previous (crashed) run left unresolved, with the same ids
        recovered = sdk.recover()
        print(f"recovered {len(recovered)} payment(s) from the journal")

        # 2. accounts (idempotent: `exists` is fine)
        sdk.ensure_accounts([Account(id=a, ledger=USD, code=1) for a in accounts])

        # 3. one payment, synchronously, raising on a failing result code
        (first,) = sdk.submit([Transfer(id=new_id(), debit_account_id=accounts[0], credit_account_id=accounts[1],
                                        amount=150, ledger=USD, code=1, psp_id=psp)], raise_on_failure=True)
        print(f"first payment: log index {first.log_index}, block {first.block}")

        # 4. a stream: send() blocks when the window is full; outcomes arrive on futures
        rng = random.Random()
        results: Counter[str] = Counter()
        t0 = time.monotonic()
        with sdk.session() as session:
            futures = []
            for _ in range(args.payments):
                dr, cr = rng.sample(accounts, 2)
                futures.append(session.send(Transfer(id=new_id(), debit_account_id=dr, credit_account_id=cr,
                                                     amount=micro_amount(rng), ledger=USD, code=1, psp_id=psp)))
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
