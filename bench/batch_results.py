"""What recording Message Batches results adds to reading them, as ratios to a plain client in the same run.

One batch of `--results` succeeded results (default 20,000) on the loopback simulator (in a child process,
as the real API runs elsewhere: its threads would otherwise compete with the reader's), read through
`client.messages.batches.results(...)` by a plain client and by a client with compactobs' middleware
(recording into an SQLite store in a temporary directory), alternately, `--rounds` times each. Printed:
the median wall time per result of each, and their ratio (when results come faster than the recording
thread records them, the reader records them itself once 2,048 wait, so memory stays bounded); then, in
one more read each under tracemalloc, the peak memory allocated while reading (the results body is never
buffered: the peak should not grow with the batch), and whether every result was stored once.

    python bench/batch_results.py [--results 20000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import multiprocessing
import statistics
import sys
import tempfile
import time
import tracemalloc
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import anthropic
from sqlalchemy import func, select

import compactobs
from compactobs import store
from compactobs.testing import Reply, Simulator, message

MODEL = "claude-opus-4-8"


def make_batch(sim: Simulator, count: int) -> str:
    for n in range(count):
        sim.batches.plan(
            f"r{n}", Reply(message(model=MODEL, usage={"input_tokens": 1000, "output_tokens": 100}))
        )
    params = {"model": MODEL, "max_tokens": 8, "messages": [{"role": "user", "content": "x"}]}
    client = anthropic.Anthropic(base_url=sim.base_url, api_key="k")
    requests: Any = [{"custom_id": f"r{n}", "params": params} for n in range(count)]
    return client.messages.batches.create(requests=requests).id


def serve(count: int, connection: Connection) -> None:
    """The child process: a simulator holding the batch, until told to stop."""
    with Simulator() as sim:
        connection.send((sim.base_url, make_batch(sim, count)))
        connection.recv()


def read(client: anthropic.Anthropic, batch_id: str) -> int:
    return sum(1 for _ in client.messages.batches.results(batch_id))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=3)
    options = parser.parse_args()
    count = options.results
    parent_end, child_end = multiprocessing.Pipe()
    server = multiprocessing.get_context("spawn").Process(target=serve, args=(count, child_end), daemon=True)
    server.start()
    base_url, batch_id = parent_end.recv()
    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite:///{Path(tmp) / 'bench.db'}"
        compactobs.configure(url)
        plain = anthropic.Anthropic(base_url=base_url, api_key="k")
        recorded = anthropic.Anthropic(base_url=base_url, api_key="k", middleware=[compactobs.Middleware()])
        times: dict[str, list[float]] = {"plain": [], "compactobs": []}
        for _ in range(options.rounds):
            for name, client in (("plain", plain), ("compactobs", recorded)):
                start = time.perf_counter()
                assert read(client, batch_id) == count
                times[name].append((time.perf_counter() - start) / count)
                compactobs.flush()  # the recording and the store's writes, outside the timed read
        peaks = {}
        for name, client in (("plain", plain), ("compactobs", recorded)):
            tracemalloc.start()
            read(client, batch_id)
            peaks[name] = tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()
            compactobs.flush()
        engine = store.make_engine(url, create=False)
        with engine.connect() as connection:
            stored = connection.execute(select(func.count()).select_from(store.calls)).scalar_one()
        engine.dispose()
        compactobs.shutdown()
    parent_end.send("stop")
    server.join()
    plain_us, ours_us = (statistics.median(times[name]) * 1e6 for name in ("plain", "compactobs"))
    print(f"{count:,} results, {options.rounds} rounds, median per result:")
    print(f"  plain       {plain_us:8.1f} us")
    print(f"  compactobs  {ours_us:8.1f} us   ({ours_us / plain_us:.2f}x)")
    plain_mb, ours_mb = (peaks[name] / 1e6 for name in ("plain", "compactobs"))
    print(f"peak memory while reading: plain {plain_mb:.1f} MB, compactobs {ours_mb:.1f} MB")
    print(f"stored: {stored:,} calls after {options.rounds + 1} reads of {count:,} results")
    sys.exit(0 if stored == count else 1)


if __name__ == "__main__":
    import _harness

    _harness.run(main)
