"""A test that leaves a non-daemon thread running fails at its teardown, naming the thread.

Python waits for every non-daemon thread before it exits, so one left running (a SQLite store
never closed keeps aiosqlite's thread) would hang the whole run after its last test. Load with
``pytest_plugins = ["tests.threads"]``. Threads alive before the test's setup, and threads that
fixtures of a broader scope start (they stop with their fixture), are not the test's.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Generator
from typing import Any

import pytest

# Seconds all the test's threads together get to end after its teardown.
GRACE = 5.0

_BEFORE = pytest.StashKey[set[threading.Thread]]()
# Threads started while a fixture of session, package, module or class scope was set up.
_SHARED: set[threading.Thread] = set()


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> Generator[None, None, None]:
    item.stash[_BEFORE] = set(threading.enumerate())
    return (yield)


@pytest.hookimpl(wrapper=True)
def pytest_fixture_setup(
    fixturedef: pytest.FixtureDef[Any], request: pytest.FixtureRequest
) -> Generator[None, Any, Any]:
    if fixturedef.scope == "function":
        return (yield)
    before = set(threading.enumerate())
    try:
        return (yield)
    finally:
        _SHARED.update(set(threading.enumerate()) - before)


@pytest.hookimpl(wrapper=True, trylast=True)
def pytest_runtest_teardown(item: pytest.Item) -> Generator[None, None, None]:
    result = yield
    before = item.stash.get(_BEFORE, set())
    _SHARED.intersection_update(threading.enumerate())
    left = [
        thread
        for thread in threading.enumerate()
        if not thread.daemon and thread not in before and thread not in _SHARED
    ]
    deadline = time.monotonic() + GRACE
    for thread in left:
        thread.join(max(0.0, deadline - time.monotonic()))
    running = [thread.name for thread in left if thread.is_alive()]
    if running:
        pytest.fail(
            f"non-daemon thread(s) still running {GRACE:g} s after the test: "
            f"{', '.join(running)} (a store, client or executor left open would hang the run "
            "at exit)",
            pytrace=False,
        )
    return result
