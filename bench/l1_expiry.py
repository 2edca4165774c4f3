"""L1 expiry with and without its spread: the reads that popular codes send behind L1.

The app's own L1Cache and TieredCache, on a virtual clock, in front of a backend that counts
the lookups that reach it (what Redis sees, or the store when Redis is off): 1,000 popular
codes, all stored in L1 in the same instant (as after a worker starts or flushes its L1 on
re-subscribing), each asked for 10 times a second, evenly, for 300 s, with the default
TTL of 30 s. Two runs: the spread off (every entry lives exactly the TTL, as before) and on
(the default: each entry lives 80% to 100% of it). For each: the reads in the worst second,
the number of seconds with any read, and all reads. Counts only, no timing: the machine's
load does not change them.
The table is printed and written as the section "## L1 expiry" of docs/BENCHMARKS.md.

    python bench/l1_expiry.py [--codes N] [--rate R] [--seconds S] [--out docs/BENCHMARKS.md]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import sys
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import cast

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from redirect import write_section  # noqa: E402

from shortener.cache.l1 import EXPIRY_SPREAD, L1Cache  # noqa: E402
from shortener.cache.tiered import TieredCache  # noqa: E402
from shortener.config import Settings  # noqa: E402
from shortener.links.model import Link  # noqa: E402
from shortener.store import Store  # noqa: E402

SECTION = "## L1 expiry"
_EPOCH = datetime(2026, 1, 1, tzinfo=UTC)


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class CountingBackend:
    """Answers every code with a link, counting the lookups per virtual second."""

    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self.reads: Counter[int] = Counter()

    async def get_link(self, code: str) -> Link:
        self.reads[int(self._clock.now)] += 1
        return Link(
            1, code, f"https://example.com/{code}", None, _EPOCH, _EPOCH, None, None, 302,
            False, False, 0, 1,
        )  # fmt: skip


@dataclass
class Run:
    spread: float
    worst_second: int
    seconds_with_reads: int
    reads: int


async def simulate(spread: float, codes: int, rate: int, seconds: int, ttl: float) -> Run:
    clock = Clock()
    backend = CountingBackend(clock)
    l1 = L1Cache(
        codes * 2, ttl, Settings().l1_negative_ttl, spread=spread, timer=clock,
        rng=random.Random(1).random,
    )  # fmt: skip
    tiered = TieredCache(l1, None, cast(Store, backend))
    names = [f"code{n:05d}" for n in range(codes)]
    for code in names:  # all loaded in one instant, as after a start or a flush
        await tiered.load(code)
    steps = rate * seconds
    for step in range(steps):
        clock.now = step / rate
        for code in names:
            if l1.get(code) is None:
                await tiered.load(code)
    after_load = Counter({second: n for second, n in backend.reads.items()})
    after_load[0] -= codes  # the initial load is the same in both runs
    return Run(
        spread=spread,
        worst_second=max(after_load.values()),
        seconds_with_reads=sum(1 for n in after_load.values() if n > 0),
        reads=sum(after_load.values()),
    )


def _label(spread: float) -> str:
    return "off (every entry lives the TTL)" if spread == 0 else f"on ({spread:.0%} of the TTL)"


def section(runs: Sequence[Run], codes: int, rate: int, seconds: int, ttl: float) -> str:
    rows = "\n".join(
        f"| {_label(run.spread)} | {run.worst_second:,} | {run.seconds_with_reads} "
        f"| {run.reads:,} |"
        for run in runs
    )
    off, on = runs
    load = os.getloadavg()[0]
    return f"""{SECTION}

`python bench/l1_expiry.py` (a simulation on a virtual clock with the app's own `L1Cache` and
`TieredCache`; counts, not timings, so the machine's load, {load:.1f} at this run, does not
move them): {codes:,} popular codes stored in L1 in one instant, as after a worker starts or
flushes its L1, each asked for {rate} times a second for {seconds} s, TTL {ttl:.0f} s. Reads
are the lookups that got past L1 (to Redis, or to the store when Redis is off), the first
load not counted.

| expiry spread | reads in the worst second | seconds with reads | reads in all |
| --- | --- | --- | --- |
{rows}

With one fixed TTL every popular code expires in the same instant, again and again, and
each worker sends {off.worst_second:,} reads in one second every {ttl:.0f} s. Spread over the
last fifth of the TTL, the worst second has {on.worst_second:,} reads (the first expiry, six
seconds wide), and each reload draws a new lifetime, so later expiries spread further. The
price is more reads in all: {on.reads / off.reads - 1:+.0%} over these {seconds} s (the fixed
TTL's expiries fall on whole multiples of it), {1 / (1 - on.spread / 2) - 1:+.0%} in the long
run, since an entry lives {1 - on.spread / 2:.0%} of the TTL on average.
"""


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--codes", type=int, default=1000)
    parser.add_argument("--rate", type=int, default=10, help="requests a second per code")
    parser.add_argument("--seconds", type=int, default=300)
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "BENCHMARKS.md")
    args = parser.parse_args(argv)
    ttl = Settings().l1_ttl
    runs = [
        asyncio.run(simulate(spread, args.codes, args.rate, args.seconds, ttl))
        for spread in (0.0, EXPIRY_SPREAD)
    ]
    text = section(runs, args.codes, args.rate, args.seconds, ttl)
    print(text)
    write_section(args.out, text, SECTION)
    return 0


if __name__ == "__main__":
    sys.exit(main())
