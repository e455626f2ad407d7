"""Secrets never reach a log, whatever field carries them."""

from __future__ import annotations

import io
import json

from bsud.logs import configure_logging, get_logger, register_secrets


def test_secret_values_and_keys_are_masked():
    stream = io.StringIO()
    register_secrets(["SuperSecretValue42"])
    configure_logging("debug", stream=stream, json=True)
    try:
        log = get_logger("t")
        log.info("calling", argv=["tool", "--key=SuperSecretValue42"], secret_key="abc", note="x SuperSecretValue42")
        log.info("nested", data={"password": "hunter2", "ok": "SuperSecretValue42"})
    finally:
        configure_logging("debug", json=True)
    text = stream.getvalue()
    assert "SuperSecretValue42" not in text and "hunter2" not in text
    first, second = (json.loads(line) for line in text.splitlines())
    assert first["argv"] == ["tool", "--key=********"]
    assert first["secret_key"] == "********"
    assert second["data"]["password"] == "********"


def test_console_renderer_when_not_json():
    stream = io.StringIO()
    configure_logging("info", stream=stream, json=False)
    try:
        get_logger("t").info("hello", drive="data")
        get_logger("t").debug("hidden")
    finally:
        configure_logging("debug", json=True)
    text = stream.getvalue()
    assert "hello" in text and "drive=data" in text and "hidden" not in text
