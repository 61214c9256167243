"""AWS requests the pipeline makes per 1,000 records, by service and operation (the endpoint call excluded).

Usage (from the repo root)::

    .venv/bin/python bench/aws_requests.py                 # 1,000 short prompts through `sagebatch run`
    .venv/bin/python bench/aws_requests.py --perf         # calls as slow as on a g5.2xlarge (real time: timers count)

Runs `sagebatch.tooling.local.session.run_file` (moto + the emulator) and counts, with a botocore `before-call`
hook, every request made by the clients the Lambda handlers use (`sagebatch.lambdas.clients.client`): what the
deployed functions would send. The local harness's own requests (the event-source poller's receive and delete,
which Lambda's event source mapping makes in AWS, and the run's status polling) use other clients and are not
counted; the endpoint's InvokeEndpoint goes through `runtime_client` and is not counted either.
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
# bench/tokenize.py would shadow the standard library's tokenize module: import from the repo, not from bench/.
sys.path[:] = [str(REPO / "shared")] + [p for p in sys.path if Path(p or ".").resolve() != REPO / "bench"]


class RequestCounter:
    """Counts (service, operation) of every request its hooked clients make; thread-safe."""

    def __init__(self) -> None:
        self.counts: Counter[tuple[str, str]] = Counter()
        self._lock = threading.Lock()

    def hook(self, client: Any) -> Any:
        service = client.meta.service_model.service_name

        def count(model: Any, **_: Any) -> None:
            with self._lock:
                self.counts[(service, model.name)] += 1

        client.meta.events.register("before-call", count)
        return client


def count_clients(counter: RequestCounter) -> None:
    """Hook every client the handlers create from now on (the service module imported `client` by name)."""
    from sagebatch.lambdas import clients, service

    original = clients.client.__wrapped__

    @functools.cache
    def hooked(name: str) -> Any:
        return counter.hook(original(name))

    clients.client = hooked
    service.client = hooked


def records(count: int) -> bytes:
    return b"".join(
        json.dumps({"id": f"r{n}", "prompt": f"Write one sentence about the number {n}."}).encode() + b"\n" for n in range(count)
    )


def table(counter: RequestCounter, count: int) -> list[str]:
    per_thousand = 1000 / count
    rows = [f"{'service':<10} {'operation':<28} {'requests':>9} {'per 1,000 records':>18}"]
    by_service: Counter[str] = Counter()
    for (service, operation), n in sorted(counter.counts.items()):
        rows.append(f"{service:<10} {operation:<28} {n:>9} {n * per_thousand:>18.1f}")
        by_service[service] += n
    rows.append("")
    for service, n in sorted(by_service.items()):
        rows.append(f"{service:<10} {'(all)':<28} {n:>9} {n * per_thousand:>18.1f}")
    total = sum(by_service.values())
    rows.append(f"{'total':<10} {'':<28} {total:>9} {total * per_thousand:>18.1f}")
    rows.append(f"requests per record besides the endpoint call: {total / count:.3f}")
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=1000)
    parser.add_argument("--perf", action="store_true", help="the calibrated TGI performance model (real call times)")
    parser.add_argument("--time-scale", type=float, default=1.0, help="run the performance model this many times faster")
    args = parser.parse_args(argv)

    from sagebatch.observability import logger
    from sagebatch.tooling.emulator.server import EmulatorConfig
    from sagebatch.tooling.local.session import run_file

    logger.setLevel("WARNING")  # the handlers' INFO lines would bury the table
    counter = RequestCounter()
    count_clients(counter)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "requests.jsonl"
        path.write_bytes(records(args.records))
        emulator = EmulatorConfig(perf=True, time_scale=args.time_scale) if args.perf else None
        started = time.monotonic()
        manifest = run_file(path, Path(folder) / "out", timeout_s=3600, emulator=emulator)
        seconds = time.monotonic() - started
    mode = f"perf model x{args.time_scale:g}" if args.perf else "instant emulator"
    print(
        f"{args.records} records ({mode}), job {manifest['status']} in {seconds:.0f} s, {manifest['counts']['succeeded']} succeeded"
    )
    for row in table(counter, args.records):
        print(row)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
