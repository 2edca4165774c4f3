"""The ``topology`` fixture: devservices.topology.Topology on the session's servers.

Load as a plugin after tests.services (``pytest_plugins = ["tests.services",
"tests.topology"]``).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from devservices.topology import Topology

__all__ = ["Topology"]


@pytest.fixture
def topology(postgres_url: str, redis_url: str, tmp_path: Path) -> Iterator[Topology]:
    """A running :class:`Topology` on the session's PostgreSQL and Redis; stopped after."""
    with Topology.start(
        tmp_path / "topology", database_url=postgres_url, redis_url=redis_url
    ) as topology:
        yield topology
