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


def test_on_journald_each_level_is_a_priority_and_no_timestamp_is_added():
    stream = io.StringIO()
    configure_logging("debug", stream=stream, journal=True)
    try:
        log = get_logger("t")
        log.debug("probing", device="/dev/sdb")
        log.info("step", drive="data", action="Grow")
        log.warning("step failed", drive="data", error='cannot "grow": no space')
        try:
            raise RuntimeError("boom")
        except RuntimeError:
            log.exception("step crashed", drive="data")
    finally:
        configure_logging("debug", json=True)
    lines = stream.getvalue().splitlines()
    assert lines[:4] == ["<7>probing device=/dev/sdb", "<6>step drive=data action=Grow",
                         '<4>step failed drive=data error="cannot \\"grow\\": no space"', "<3>step crashed drive=data"]
    assert lines[4] == "<3>Traceback (most recent call last):" and lines[-1] == "<3>RuntimeError: boom"
    assert not any("timestamp=" in line for line in lines[:4])  # journald stamps the time itself


def test_the_journal_is_recognised_by_journal_stream(tmp_path, monkeypatch):
    import os

    from bsud.logs import is_journal

    with open(tmp_path / "stderr", "w") as stream:
        info = os.fstat(stream.fileno())
        monkeypatch.setenv("JOURNAL_STREAM", f"{info.st_dev}:{info.st_ino}")
        assert is_journal(stream)
        monkeypatch.setenv("JOURNAL_STREAM", f"{info.st_dev}:{info.st_ino + 1}")  # inherited, but not this stream
        assert not is_journal(stream)
        monkeypatch.delenv("JOURNAL_STREAM")
        assert not is_journal(stream)
