"""schemathesis over the server's own OpenAPI schema (model name and version fixed): valid and invalid
requests for every operation, never a 5xx. COVID_CXR_SCHEMA_CASES sets the number of cases (the
issue's one-off run used 6,000)."""

from __future__ import annotations

import collections
import os

import httpx
import pytest
import requests
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.serving.conftest import MODEL_NAME

schemathesis = pytest.importorskip("schemathesis")
GenerationMode = schemathesis.GenerationMode

CASES = int(os.environ.get("COVID_CXR_SCHEMA_CASES", "400"))
FIXED = {"name": MODEL_NAME, "version": "1", "label": "stable"}


def test_schema_driven_requests_never_get_5xx(live_server: str) -> None:
    schema = schemathesis.openapi.from_dict(httpx.get(f"{live_server}/openapi.json").json())
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 24  # every protocol, each at its model, version and label paths
    strategy = st.one_of(
        [op.as_strategy(generation_mode=mode) for op in operations for mode in GenerationMode]
    )
    statuses: collections.Counter[int] = collections.Counter()
    server_errors: list[str] = []

    @settings(
        max_examples=CASES,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(case=strategy)
    def run(case: schemathesis.Case) -> None:
        case.path_parameters = {
            key: FIXED.get(key, value) for key, value in (case.path_parameters or {}).items()
        }
        response = case.call(base_url=live_server, session=session, timeout=60)
        statuses[response.status_code] += 1
        if response.status_code >= 500:
            server_errors.append(f"{case.method} {case.formatted_path}: {response.status_code}")

    with requests.Session() as session:
        run()
    print(f"schemathesis: {sum(statuses.values())} cases, statuses {dict(sorted(statuses.items()))}")  # noqa: T201
    assert sum(statuses.values()) >= CASES * 0.9
    assert server_errors == []
    assert statuses[200] > 0 and any(400 <= code < 500 for code in statuses)
