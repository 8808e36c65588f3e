"""Property-based fuzzing of every operation in ``/v1/openapi.json`` (schemathesis, against
the Flask app in process through WSGI, authenticated with the operator's admin key): no 5xx,
no status, content type, header or body that the document does not declare."""

from __future__ import annotations

import itertools
import os

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode, checks

from tests.security.conftest import chat_lines, upload

KEY = "dor-fuzz-bootstrap-key-00000000"
AUTH = {"Authorization": f"Bearer {KEY}"}
# Per operation and mode (valid, invalid data); ~30 operations.
# DORADO_FUZZ_EXAMPLES=500 for a deeper run by hand.
EXAMPLES = int(os.environ.get("DORADO_FUZZ_EXAMPLES", "15"))
CHECKS = [
    checks.not_a_server_error,
    checks.status_code_conformance,
    checks.content_type_conformance,
    checks.response_schema_conformance,
    checks.response_headers_conformance,
]


@pytest.fixture(scope="module")
def fuzz_schema(tmp_path_factory, module_postgres_url):
    from api import create_app
    from core.bootstrap import prepare_database
    from core.settings import load_settings

    home = tmp_path_factory.mktemp("fuzz") / "home"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DORADO_HOME", str(home))
        mp.setenv("DORADO_BOOTSTRAP_API_KEY", KEY)
        # PostgreSQL, as in production: it refuses more than SQLite (NUL bytes, overflow).
        mp.setenv("DORADO_DATABASE_URL", module_postgres_url)
        mp.delenv("DORADO_BROKER_URL", raising=False)
        # Nothing listens here: a chat completion fails fast (503) instead of waiting.
        mp.setenv("DORADO_INFERENCE_URL", "http://127.0.0.1:9")
        mp.setenv("DORADO_RATE_LIMIT_PER_MINUTE", "0")
        settings_ = load_settings()
        prepare_database(settings_)
        app = create_app(settings_)
        # Some data for the list endpoints to return (their objects are schema-checked).
        client = app.test_client()
        resp = upload(client, AUTH, chat_lines(10, "fuzz"))
        assert resp.status_code == 200
        assert (
            client.post(
                "/v1/fine_tuning/jobs",
                headers=AUTH,
                json={"model": "tiny-random-llama", "training_file": resp.get_json()["id"]},
            ).status_code
            == 200
        )
        yield schemathesis.openapi.from_wsgi("/v1/openapi.json", app)


def test_api_conforms_to_its_openapi_document(fuzz_schema):
    operations = [result.ok() for result in fuzz_schema.get_all_operations()]
    assert len(operations) >= 25, [o.label for o in operations]
    failures: list[str] = []
    for operation, mode in itertools.product(operations, list(GenerationMode)):

        @given(case=operation.as_strategy(generation_mode=mode))
        @settings(
            max_examples=EXAMPLES,
            deadline=None,
            derandomize=True,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        def run(case):
            case.call_and_validate(headers=AUTH, checks=CHECKS)

        try:
            run()
        except Exception as exc:  # collect every operation's failure, then report them all
            failures.append(f"{operation.label} ({mode.value}): {str(exc)[:1500]}")
    assert not failures, "\n\n".join(failures)
