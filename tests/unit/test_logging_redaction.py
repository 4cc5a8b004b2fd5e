"""The log redaction processor and the log context: secrets under secret-looking keys (at any depth) and
secret-looking values inside any string are replaced by ``[redacted]``, exceptions included; useful
neighbours (token counts, cache keys, ids) are kept; request ids and span ids reach the rendered line."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from typing import Any

import pytest
import structlog
from opentelemetry.sdk.trace import TracerProvider
from structlog.contextvars import bound_contextvars

from crewflow.entrypoints.logs import REDACTED, configure_logging, redact, redact_value
from crewflow.settings import Settings

pytestmark = pytest.mark.unit

JWT = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiJ1LTEiLCJ0ZW5hbnQiOiJ0LTEifQ.c2lnbmF0dXJlLWJ5dGVz"
OPENAI_KEY = "sk-proj-AbCdEfGh0123456789xyz"
ANTHROPIC_KEY = "sk-ant-api03-ZyXwVuTs9876543210"


def _redacted(**event: Any) -> dict[str, Any]:
    return dict(redact(None, "info", dict(event)))


@pytest.mark.parametrize("key", ["password", "new_password", "Authorization", "api_key", "apiKey", "x-api-key",
                                 "client_secret", "cookie", "set-cookie", "token", "access_token", "refresh-token",
                                 "private_key", "credentials", "dsn"])  # fmt: skip
def test_values_under_secret_keys_are_redacted_whatever_they_hold(key: str) -> None:
    assert _redacted(**{key: "plain-value-123"})[key] == REDACTED
    assert _redacted(nested={"deeper": [{key: {"any": "shape"}}]})["nested"] == {"deeper": [{key: REDACTED}]}


@pytest.mark.parametrize("key", ["input_tokens", "output_tokens", "max_tokens", "tokens", "cache_key",
                                 "token_type", "request_id", "execution_id", "provider"])  # fmt: skip
def test_useful_neighbours_of_secret_words_are_kept(key: str) -> None:
    assert _redacted(**{key: "kept-value-1234"})[key] == "kept-value-1234"


@pytest.mark.parametrize(("text", "expected"), [
    (f"Authorization: Bearer {JWT}", f"Authorization: Bearer {REDACTED}"),
    ("basic auth Basic dXNlcjpwYXNzd29yZA==", f"basic auth Basic {REDACTED}"),
    (f"token was {JWT} for u-1", f"token was {REDACTED} for u-1"),
    (f"provider said: invalid key {OPENAI_KEY}.", f"provider said: invalid key {REDACTED}."),
    (f"{ANTHROPIC_KEY}", REDACTED),
    ("postgresql+asyncpg://crewflow:s3cr3t-pw@db:5432/crewflow", f"postgresql+asyncpg://crewflow:{REDACTED}@db:5432/crewflow"),
    ("redis://:hunter2hunter2@cache:6379/0", f"redis://:{REDACTED}@cache:6379/0"),
    ("GET /ws?token=abcdef123456&after=3", f"GET /ws?token={REDACTED}&after=3"),
    ("nothing secret in this message", "nothing secret in this message"),
    ("sk-short", "sk-short"),
])  # fmt: skip
def test_secret_looking_values_are_cut_out_of_any_string(text: str, expected: str) -> None:
    assert redact_value(text) == expected
    assert _redacted(event=text)["event"] == expected
    assert _redacted(detail={"list": [text], "tuple": (text,)})["detail"] == {"list": [expected], "tuple": [expected]}


def test_numbers_booleans_and_none_pass_through_untouched() -> None:
    assert _redacted(input_tokens=12, ok=True, cost=0.5, error=None, password=None) == {
        "input_tokens": 12, "ok": True, "cost": 0.5, "error": None, "password": None}  # fmt: skip


@pytest.fixture
def json_logs(capsys: pytest.CaptureFixture[str]) -> Iterator[Any]:
    root = logging.getLogger()
    before = list(root.handlers)
    configure_logging(Settings(log_format="json", log_level="info"))
    capsys.readouterr()
    try:
        yield lambda: [json.loads(line) for line in capsys.readouterr().err.splitlines() if line.strip()]
    finally:
        structlog.reset_defaults()
        for handler in [h for h in root.handlers if h not in before]:
            root.removeHandler(handler)


def test_rendered_lines_carry_the_bound_context_and_no_secret_even_in_tracebacks(json_logs: Any) -> None:
    log = structlog.get_logger("test")
    with bound_contextvars(request_id="req-7", tenant_id="t-1"):
        log.info("provider.created", api_key=OPENAI_KEY, headers={"authorization": f"Bearer {JWT}"})
        try:
            raise RuntimeError(f"upstream refused {OPENAI_KEY} with Bearer {JWT}")
        except RuntimeError:
            log.exception("call.failed")
        logging.getLogger("some.library").warning("connecting to %s", "postgresql://app:pw-123456@db/app")
    created, failed, library = json_logs()
    assert created["request_id"] == "req-7" and created["tenant_id"] == "t-1"
    assert created["api_key"] == REDACTED and created["headers"] == {"authorization": REDACTED}
    assert "RuntimeError: upstream refused" in failed["exception"]
    assert failed["request_id"] == "req-7"
    assert library["logger"] == "some.library" and library["request_id"] == "req-7"
    assert library["event"] == f"connecting to postgresql://app:{REDACTED}@db/app"
    text = json.dumps([created, failed, library])
    for secret in (OPENAI_KEY, JWT, "pw-123456"):
        assert secret not in text


def test_lines_inside_a_span_name_its_trace_and_span(json_logs: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OTEL_SDK_DISABLED", raising=False)  # set by CrewAI's import in an earlier test
    tracer = TracerProvider().get_tracer("test")
    with tracer.start_as_current_span("work") as span:
        structlog.get_logger("test").info("inside")
    structlog.get_logger("test").info("outside")
    inside, outside = json_logs()
    context = span.get_span_context()
    assert inside["trace_id"] == format(context.trace_id, "032x")
    assert inside["span_id"] == format(context.span_id, "016x")
    assert "trace_id" not in outside
