"""The guard of tests/threads.py, run by pytest on tests that leave threads behind."""

from __future__ import annotations

import pytest

from tests.services import PROJECT_ROOT

# The threads these tests leave running end when the session does (pytest_unconfigure), so
# that the inner run itself can exit: a leak here must fail a test, not hang the run.
CONFTEST = """
import threading

import pytest

STOP = threading.Event()


def pytest_unconfigure():
    STOP.set()


@pytest.fixture(scope="session")
def shared_worker():
    done = threading.Event()
    worker = threading.Thread(target=done.wait, name="session-worker")
    worker.start()
    yield worker
    done.set()
    worker.join()
"""

TESTS = """
import threading

from conftest import STOP


def test_leaves_a_thread_running():
    threading.Thread(target=STOP.wait, name="left-running").start()


def test_a_daemon_thread_is_not_waited_for():
    threading.Thread(target=STOP.wait, name="daemon", daemon=True).start()


def test_a_joined_thread_is_fine():
    worker = threading.Thread(target=lambda: None, name="joined")
    worker.start()
    worker.join()


def test_a_session_fixtures_thread_is_not_the_tests(shared_worker):
    assert shared_worker.is_alive()


def test_one_still_running_from_an_earlier_test_is_not_this_ones():
    assert any(thread.name == "left-running" for thread in threading.enumerate())
"""


def test_a_test_leaving_a_non_daemon_thread_running_fails_naming_it(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytester.makeconftest(CONFTEST)
    pytester.makepyfile(test_leaks=TESTS)
    monkeypatch.setenv("PYTHONPATH", str(PROJECT_ROOT))
    result = pytester.runpytest_subprocess("-p", "tests.threads", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=5, errors=1)
    result.stdout.fnmatch_lines(
        [
            "*ERROR at teardown of test_leaves_a_thread_running*",
            "*non-daemon thread(s) still running 5 s after the test: left-running *",
        ]
    )
    assert "session-worker" not in result.stdout.str()
