"""Schemathesis against the served OpenAPI document: no input gets a 5xx or an unlisted answer."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from schemathesis.schemas import BaseSchema

from tests.services import AppInstance, AppInstanceFactory, keys_create

pytestmark = pytest.mark.slow

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[AppInstance, str]]:
    folder = tmp_path_factory.mktemp("schemathesis")
    env = {
        "SHORTENER_DATABASE_URL": f"sqlite:///{folder / 'links.db'}",
        "SHORTENER_BASE_URL": "https://sho.rt",
        # The fuzz asks for hundreds of unknown codes; the scanner limit is tested elsewhere.
        "SHORTENER_NOT_FOUND_PER_MINUTE": "100000",
        "SHORTENER_CREATES_PER_KEY_PER_MINUTE": "100000",
    }
    factory = AppInstanceFactory(Path(folder))
    try:
        instance = factory(env)
        yield instance, keys_create(env)
    finally:
        factory.close()


@pytest.fixture(scope="module")
def api_schema(served: tuple[AppInstance, str]) -> BaseSchema:
    instance, _ = served
    return schemathesis.openapi.from_url(f"{instance.url}/api/v1/openapi.json")


schema = schemathesis.pytest.from_fixture("api_schema")
ANSWERS: Counter[tuple[str, int]] = Counter()


@schema.parametrize()
@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
def test_no_input_breaks_the_api(case: schemathesis.Case, served: tuple[AppInstance, str]) -> None:
    instance, key = served
    response = case.call(base_url=instance.url, headers={"Authorization": f"Bearer {key}"})
    ANSWERS[(f"{case.method} {case.path}", response.status_code)] += 1
    case.validate_response(response, checks=CHECKS)


def test_the_fuzzing_reached_the_success_paths() -> None:
    """Runs after the fuzz above: it must have made links, not only been refused."""
    assert ANSWERS[("POST /api/v1/links", 201)] > 0, dict(ANSWERS)
    assert ANSWERS[("GET /api/v1/links", 200)] > 0, dict(ANSWERS)
    assert any(call == "GET /api/v1/links/{code}/stats" for call, _ in ANSWERS), dict(ANSWERS)
