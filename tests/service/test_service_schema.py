"""Fuzz the service against its own OpenAPI spec with schemathesis, in-process (ASGI): every operation, valid
and invalid inputs, with the write key. Bounded in examples (30 per operation and mode, derandomised) and in
time (5 minutes for the whole run; no per-example deadline), so it takes tens of seconds on two cores. Asserts
no server error and that every status code, content type, header and body is the one the spec documents."""

from __future__ import annotations

import numpy as np
import pytest

# A plain import, not importorskip: schemathesis is pinned in the dev extra, so a CI run without it fails here
# instead of skipping the fuzzing silently.
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from deepmetric.gallery import Gallery
from deepmetric.service.app import create_app
from service_helpers import MODEL_CONFIG

API_KEY = "schema-key"
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_headers_conformance,
          response_schema_conformance]


@pytest.mark.slow  # ~25 s on two cores
@pytest.mark.timeout(300)  # bounded in time as well as in examples: a hang fails the run instead of stalling CI
def test_the_service_keeps_to_its_spec(tmp_path):
    from deepmetric.models import build_embedder

    with Gallery.create(tmp_path / "g", model=build_embedder(MODEL_CONFIG)) as gallery:
        gallery.enroll("alice", embeddings=np.eye(16)[:2])  # something to find, list, read and delete
        # testserver is the Host the in-process client sends.
        app = create_app(gallery, api_key=API_KEY, allowed_hosts=("localhost", "testserver"),
                         max_upload_bytes=200_000)
        schema = schemathesis.openapi.from_asgi("/openapi.json", app)
        operations = [result.ok() for result in schema.get_all_operations()]
        assert len(operations) >= 14
        modes = (schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE)
        for operation in operations:
            for mode in modes:

                @given(case=operation.as_strategy(generation_mode=mode))
                @settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck),
                          derandomize=True, database=None)
                def keeps_to_the_spec(case) -> None:
                    case.call_and_validate(headers={"X-API-Key": API_KEY}, checks=CHECKS)

                try:
                    keeps_to_the_spec()
                except Unsatisfiable:  # an operation without parameters has no invalid input to make
                    assert mode is schemathesis.GenerationMode.NEGATIVE, operation.label
                    assert not list(operation.iter_parameters()), operation.label
