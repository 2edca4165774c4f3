"""Every code the store holds, in a compact filter each worker keeps: an unknown code is told
apart from a link without asking PostgreSQL.

A Bloom filter answers "surely not" or "maybe": "maybe" goes on to the store as before, so a
false positive costs one query, never a wrong answer. It is only trusted while the
invalidation channel is live, because that is how codes created by other workers reach it:
every change is published after it is stored, and each message adds its code. Whenever the
channel is (re)established the filter is loaded again from the store, after subscribing, so a
code stored before the load is in the load and one stored after it arrives as a message. A
new code is therefore found by other workers once its invalidation reaches them, as a
changed link is (the same bound on staleness).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
from collections.abc import Awaitable, Callable

from shortener.errors import StoreUnavailable

log = logging.getLogger(__name__)

BITS_PER_CODE = 10
HASHES = 7  # with 10 bits a code, about 1% false positives at capacity
MIN_CAPACITY = 100_000
_RETRY = 1.0
# Codes added to a filter being built before the loop lets requests in again (a few ms).
_CHUNK = 500


class _Bloom:
    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.count = 0
        self._bits = capacity * BITS_PER_CODE
        self._array = bytearray((self._bits + 7) // 8)

    def _positions(self, code: str) -> list[int]:
        digest = hashlib.blake2b(code.encode(), digest_size=16).digest()
        first = int.from_bytes(digest[:8], "little")
        step = int.from_bytes(digest[8:], "little") | 1
        bits = self._bits
        return [(first + i * step) % bits for i in range(HASHES)]

    def add(self, code: str) -> None:
        array = self._array
        for position in self._positions(code):
            array[position >> 3] |= 1 << (position & 7)
        self.count += 1

    def __contains__(self, code: str) -> bool:
        array = self._array
        return all(array[position >> 3] >> (position & 7) & 1 for position in self._positions(code))


class KnownCodes:
    def __init__(self, load: Callable[[], Awaitable[list[str]]]) -> None:
        self._load = load
        self._filter: _Bloom | None = None
        # Codes heard of while a load runs, added once it is in.
        self._arrived: list[str] | None = None
        self._loading: asyncio.Task[None] | None = None
        self.ready = False
        # Plain counter: lookups the filter answered, sparing the store.
        self.spared = 0

    def surely_unknown(self, code: str) -> bool:
        return self.ready and self._filter is not None and code not in self._filter

    def add(self, code: str) -> None:
        if self._arrived is not None:
            self._arrived.append(code)
        if self._filter is not None:
            self._filter.add(code)
            if self._filter.count > self._filter.capacity and self._loading is None:
                self.refresh()  # fuller than it was sized for: load it again, larger

    def forget(self) -> None:
        """The channel is gone: codes made elsewhere may not reach the filter any more."""
        self.ready = False

    def refresh(self) -> None:
        """Loads the filter again from the store, in the background; call after subscribing."""
        self.ready = False
        if self._loading is not None:
            self._loading.cancel()
        self._arrived = []
        self._loading = asyncio.create_task(self._reload())

    async def _reload(self) -> None:
        try:
            while True:
                self._arrived = []
                try:
                    codes = await self._load()
                except StoreUnavailable as exc:
                    log.warning("known codes not loaded, store unavailable: %s", exc)
                    await asyncio.sleep(_RETRY)
                    continue
                bloom = _Bloom(max(MIN_CAPACITY, 2 * (len(codes) + len(self._arrived))))
                # A chunk at a time, letting requests in between: a million codes took the
                # event loop for seconds. Codes heard of meanwhile join `_arrived`.
                for start in range(0, len(codes), _CHUNK):
                    if start:
                        await asyncio.sleep(0)
                    for code in codes[start : start + _CHUNK]:
                        bloom.add(code)
                arrived, self._arrived = self._arrived, None
                for code in arrived:
                    bloom.add(code)
                self._filter = bloom
                self.ready = True
                return
        finally:
            if self._loading is asyncio.current_task():
                self._loading = None

    async def close(self) -> None:
        if self._loading is not None:
            self._loading.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._loading
