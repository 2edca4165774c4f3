"""The filter of known codes: surely-unknown answers only while loaded, nothing missed."""

from __future__ import annotations

import asyncio

from shortener.cache.known import KnownCodes
from shortener.errors import StoreUnavailable


async def test_unknown_only_once_loaded_and_never_for_a_known_code() -> None:
    stored = [f"code{n}" for n in range(1000)]

    async def load() -> list[str]:
        return list(stored)

    known = KnownCodes(load)
    assert not known.surely_unknown("nope")  # not loaded: the store decides
    known.refresh()
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert known.ready
    assert not any(known.surely_unknown(code) for code in stored)
    unknown = sum(known.surely_unknown(f"other{n}") for n in range(1000))
    assert unknown > 950  # a Bloom filter: a few false "maybe"s, each costing a query
    known.add("made-later")
    assert not known.surely_unknown("made-later")
    known.forget()
    assert not known.surely_unknown("other1")


async def test_codes_heard_of_while_loading_are_kept() -> None:
    release = asyncio.Event()

    async def load() -> list[str]:
        await release.wait()
        return ["old"]

    known = KnownCodes(load)
    known.refresh()
    await asyncio.sleep(0)
    known.add("new")  # published while the load was running
    release.set()
    for _ in range(3):
        await asyncio.sleep(0)
    assert known.ready
    assert not known.surely_unknown("old") and not known.surely_unknown("new")


async def test_a_store_that_cannot_answer_leaves_it_unloaded_and_retries() -> None:
    attempts = 0

    async def load() -> list[str]:
        nonlocal attempts
        attempts += 1
        raise StoreUnavailable("down")

    known = KnownCodes(load)
    known.refresh()
    await asyncio.sleep(0)
    assert attempts == 1 and not known.ready and not known.surely_unknown("x")
    await known.close()


async def test_a_large_load_lets_requests_in_and_keeps_codes_heard_of_meanwhile() -> None:
    stored = [f"code{n}" for n in range(5000)]

    async def load() -> list[str]:
        return list(stored)

    known = KnownCodes(load)
    known.refresh()
    await asyncio.sleep(0)
    assert not known.ready  # the loop is ours again while the filter is being built
    known.add("made-meanwhile")
    for _ in range(100):
        if known.ready:
            break
        await asyncio.sleep(0)
    assert known.ready
    assert not known.surely_unknown("made-meanwhile")
    assert not any(known.surely_unknown(code) for code in stored)
