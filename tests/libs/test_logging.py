"""setup_logging: JSON lines with context ids, human format, idempotence, noisy libraries,
and secret redaction."""

from __future__ import annotations

import asyncio
import io
import json
import logging

import pytest

from libs.logging import current_log_context, log_context, redact, setup_logging

SECRET = "s3cr3t-Value-9f8e7d"


@pytest.fixture
def restore_logging():
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    noisy = {name: logging.getLogger(name).level for name in ("nats", "grpc", "vllm")}
    yield
    for h in list(root.handlers):
        if h not in handlers:
            root.removeHandler(h)
    root.setLevel(level)
    for name, lvl in noisy.items():
        logging.getLogger(name).setLevel(lvl)


@pytest.fixture
def json_lines(restore_logging):
    """Set up JSON logging for service `filter`; returns a function reading the lines so far."""
    out = io.StringIO()
    setup_logging("INFO", json=True, service="filter", stream=out)

    def read() -> list[dict]:
        return [json.loads(line) for line in out.getvalue().splitlines() if line.strip()]

    return read


def test_json_lines_carry_standard_and_context_fields(json_lines):
    log = logging.getLogger("services.filter.worker")
    log.info("batch of %d", 3)
    log.warning("dropped", extra={"run_id": "r-1", "stage": "filter", "item_id": "r-1/t-2/0", "reason": "dup"})
    plain, tagged = json_lines()

    assert plain["msg"] == "batch of 3"
    assert plain["level"] == "INFO" and plain["logger"] == "services.filter.worker"
    assert plain["service"] == "filter"
    assert plain["ts"].endswith("Z") and "T" in plain["ts"]
    assert "run_id" not in plain

    assert tagged["level"] == "WARNING"
    assert (tagged["run_id"], tagged["stage"], tagged["item_id"]) == ("r-1", "filter", "r-1/t-2/0")
    assert tagged["reason"] == "dup"


def test_log_context_binds_nests_and_extra_wins(json_lines):
    log = logging.getLogger("t")
    with log_context(run_id="r-9", stage="solve"):
        with log_context(item_id="i-1"):
            assert current_log_context() == {"run_id": "r-9", "stage": "solve", "item_id": "i-1"}
            log.info("inner")
        log.info("outer", extra={"stage": "override"})
    log.info("after")
    inner, outer, after = json_lines()
    assert (inner["run_id"], inner["stage"], inner["item_id"]) == ("r-9", "solve", "i-1")
    assert outer["stage"] == "override" and "item_id" not in outer
    assert "run_id" not in after and "stage" not in after


async def test_log_context_is_per_task_and_sets_service(json_lines):
    log = logging.getLogger("t")

    async def work(service: str, item: str) -> None:
        with log_context(service=service, item_id=item):
            await asyncio.sleep(0.01)  # interleave the two tasks
            log.info("done")

    await asyncio.gather(work("solver", "a"), work("reward", "b"))
    lines = {line["item_id"]: line for line in json_lines()}
    assert lines["a"]["service"] == "solver" and lines["b"]["service"] == "reward"


def test_exception_traceback_in_json(json_lines):
    try:
        raise ValueError("bad thing")
    except ValueError:
        logging.getLogger("t").exception("failed")
    (line,) = json_lines()
    assert line["msg"] == "failed" and line["level"] == "ERROR"
    assert "Traceback" in line["exc"] and "ValueError: bad thing" in line["exc"]


def test_non_json_values_do_not_break_a_line(json_lines):
    logging.getLogger("t").info("x", extra={"obj": object(), "n": 1.5})
    (line,) = json_lines()
    assert line["n"] == 1.5 and line["obj"].startswith("<object object")


def test_human_readable_format(restore_logging):
    out = io.StringIO()
    setup_logging("INFO", json=False, service="solver", stream=out)
    logging.getLogger("libs.runtime").info("ready", extra={"run_id": "r-1"})
    err = out.getvalue().strip()
    assert " INFO " in err and " solver libs.runtime: ready" in err and err.endswith("run_id=r-1")
    with pytest.raises(json.JSONDecodeError):
        json.loads(err)


def test_setup_is_idempotent_and_levels(restore_logging):
    out = io.StringIO()
    setup_logging("INFO", json=True, service="a", stream=out)
    handler = setup_logging("WARNING", json=True, service="b", stream=out)
    ours = [h for h in logging.getLogger().handlers if getattr(h, "_scalequest_handler", False)]
    assert ours == [handler]
    log = logging.getLogger("t")
    log.info("hidden")
    log.warning("shown")
    lines = [json.loads(x) for x in out.getvalue().splitlines()]
    assert [x["msg"] for x in lines] == ["shown"] and lines[0]["service"] == "b"


def test_noisy_libraries_quieted_unless_debug(restore_logging):
    setup_logging("INFO", json=True, service="s", stream=io.StringIO())
    for name in ("nats", "grpc", "vllm"):
        assert logging.getLogger(name).getEffectiveLevel() == logging.WARNING
    setup_logging("DEBUG", json=True, service="s", stream=io.StringIO())
    for name in ("nats", "grpc", "vllm"):
        assert logging.getLogger(name).getEffectiveLevel() == logging.DEBUG


def test_secrets_from_env_are_redacted_everywhere(json_lines, monkeypatch):
    monkeypatch.setenv("SQ_S3_SECRET_KEY", SECRET)
    monkeypatch.setenv("HF_TOKEN", "hf_abcdefghij")
    monkeypatch.setenv("SQ_DB_PASSWORD", "pw-123456")
    monkeypatch.setenv("SQ_USE_TOKEN", "true")  # boolean-looking values are not secrets
    log = logging.getLogger("t")
    log.info("connecting with %s", SECRET)
    log.info("url https://user:pw-123456@host/ token hf_abcdefghij", extra={"detail": f"key={SECRET}"})
    try:
        raise RuntimeError(f"auth failed for {SECRET}")
    except RuntimeError:
        log.exception("boom")
    log.info("flag is true")

    lines = json_lines()
    raw = json.dumps(lines)
    assert SECRET not in raw and "pw-123456" not in raw and "hf_abcdefghij" not in raw
    assert lines[0]["msg"] == "connecting with ***"
    assert lines[1]["detail"] == "key=***" and "user:***@host" in lines[1]["msg"]
    assert "auth failed for ***" in lines[2]["exc"]
    assert lines[3]["msg"] == "flag is true"


def test_secrets_redacted_in_human_format(restore_logging, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-live-0123456789")
    out = io.StringIO()
    setup_logging("INFO", json=False, service="s", stream=out)
    logging.getLogger("t").info("calling with sk-live-0123456789")
    err = out.getvalue()
    assert "sk-live-0123456789" not in err and "calling with ***" in err


def test_redact_helper(monkeypatch):
    monkeypatch.setenv("MY_API_KEY", "abcd-efgh")
    assert redact("x abcd-efgh y") == "x *** y"
    assert redact("nothing here") == "nothing here"


def test_attributes_a_record_factory_adds_to_every_record_are_not_extras(restore_logging):
    # vLLM installs a record factory that stamps `vllm_process_name` on every record;
    # that is not something the caller passed and must not clutter each line.
    old_factory = logging.getLogRecordFactory()

    def factory(*args, **kwargs):
        record = old_factory(*args, **kwargs)
        record.vllm_process_name = "MainProcess"
        return record

    logging.setLogRecordFactory(factory)
    try:
        out = io.StringIO()
        setup_logging("INFO", json=False, service="solver", stream=out)
        logging.getLogger("libs.runtime").info("ready", extra={"run_id": "r-1"})
        assert out.getvalue().strip().endswith("  run_id=r-1")
        assert "vllm_process_name" not in out.getvalue()
    finally:
        logging.setLogRecordFactory(old_factory)
