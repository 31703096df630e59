"""A PSP process for crash tests: recover the journal, then stream payments through a session.

    python -m tests.sdk.psp_worker TARGET JOURNAL COUNT ACCOUNTS [--recover-only]

Prints ``RECOVERED n`` after recovery and ``ACKED n`` as outcomes arrive (flushed), so a test can
kill -9 it mid-stream.
"""

from __future__ import annotations

import random
import sys
import threading
from concurrent.futures import Future

from clients.ids import new_id
from clients.psp.bulk import BulkOutcomes
from clients.sdk import LedgerSDK, SdkConfig
from clients.workload import ColumnarPayments, micro_amount
from ledger.types import Transfer


def main(argv: list[str]) -> int:
    target, journal, count, accounts = argv[0], argv[1], int(argv[2]), int(argv[3])
    cfg = SdkConfig(batch_size_max=500, batch_delay_s=0.005, window_items=4000, window_batches=4)
    with LedgerSDK(target, journal=journal, config=cfg) as sdk:
        recovered = sdk.recover()
        assert all(o.ok for o in recovered), [o for o in recovered if not o.ok][:3]
        print(f"RECOVERED {len(recovered)}", flush=True)
        if "--recover-only" in argv:
            return 0
        rng = random.Random()
        acked = 0
        lock = threading.Lock()

        def on_done(f: object) -> None:
            nonlocal acked
            with lock:
                acked += 1
                if acked % 500 == 0:
                    print(f"ACKED {acked}", flush=True)

        if "--bulk" in argv:  # the bulk path: packed records from columns, outcome arrays
            gen = ColumnarPayments(accounts, first_account_id=1)

            def on_bulk(f: Future[BulkOutcomes]) -> None:
                nonlocal acked
                with lock:
                    before, acked = acked, acked + len(f.result())
                    if acked // 500 > before // 500:
                        print(f"ACKED {acked}", flush=True)

            with sdk.session() as s:
                for _ in range(count // 250):
                    s.send_records(gen.records(250)).add_done_callback(on_bulk)
            print(f"DONE {acked}", flush=True)
            return 0
        with sdk.session() as s:
            for _ in range(count):
                dr = rng.randrange(1, accounts + 1)
                cr = rng.randrange(1, accounts)
                cr = cr + 1 if cr >= dr else cr
                s.send(Transfer(id=new_id(), debit_account_id=dr, credit_account_id=cr,
                                amount=micro_amount(rng), ledger=840, code=1, psp_id=rng.randint(1, 4)),
                       callback=on_done)
        print(f"DONE {acked}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
