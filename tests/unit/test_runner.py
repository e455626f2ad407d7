"""The command runner: argv only, C locale, timeouts, one log event, CommandError details."""

from __future__ import annotations

import threading

import pytest
from structlog.testing import capture_logs

from bsud.errors import CommandError, MissingToolsError
from bsud.runner import Runner, missing_tools, preflight


def test_runs_argv_with_c_locale_and_closed_stdin():
    out = Runner().run(["sh", "-c", 'echo "$LC_ALL $LVM_SUPPRESS_FD_WARNINGS"; cat; echo end'], timeout=10)
    assert out.stdout.split() == ["C", "1", "end"]
    assert out.returncode == 0


def test_arguments_are_not_interpreted_by_a_shell(tmp_path):
    target = tmp_path / "x"
    out = Runner().run(["echo", f"; touch {target}"], timeout=10)
    assert out.stdout.strip() == f"; touch {target}"
    assert not target.exists()


def test_string_argv_is_refused():
    with pytest.raises(TypeError):
        Runner().run("echo hi", timeout=10)  # type: ignore[arg-type]


def test_failure_raises_command_error_with_details():
    with pytest.raises(CommandError) as info:
        Runner().run(["sh", "-c", "echo out; echo boom >&2; exit 3"], timeout=10)
    err = info.value
    assert (err.returncode, err.stdout.strip(), err.stderr.strip()) == (3, "out", "boom")
    assert "exit 3" in str(err) and "boom" in str(err)
    assert not err.temporary


def test_ok_codes_and_check():
    assert Runner().run(["sh", "-c", "exit 5"], timeout=10, ok_codes=(0, 5)).returncode == 5
    assert Runner().run(["false"], timeout=10, check=False).returncode == 1


def test_timeout_is_a_temporary_error():
    with pytest.raises(CommandError) as info:
        Runner().run(["sleep", "5"], timeout=0.3)
    assert info.value.returncode is None and info.value.temporary
    assert "timed out after 0.3 s" in str(info.value)


def test_one_log_event_per_command():
    with capture_logs() as logs:
        Runner().run(["true"], timeout=10)
    events = [e for e in logs if e["event"].startswith("command")]
    assert len(events) == 1
    assert events[0]["argv"] == ["true"] and events[0]["rc"] == 0 and "duration" in events[0]


def test_preflight_reports_every_missing_tool_at_once():
    assert missing_tools(["sh", "no-such-tool-1", "no-such-tool-2"]) == [
        ("no-such-tool-1", "no-such-tool-1"), ("no-such-tool-2", "no-such-tool-2")]
    with pytest.raises(MissingToolsError) as info:
        preflight(["sh", "no-such-tool-1", "no-such-tool-2"])
    assert "no-such-tool-1" in str(info.value) and "no-such-tool-2" in str(info.value)


def test_unknown_binary_is_a_missing_tool_error():
    with pytest.raises(MissingToolsError):
        Runner().run(["no-such-tool-xyz"], timeout=5)


def test_a_read_runs_once_within_a_reading_span(tmp_path):
    """Within ``reading()`` a quiet read asked twice runs once; outside it, and for commands that change
    something (not quiet), every call runs."""
    counter = tmp_path / "count"
    script = ["sh", "-c", f'echo x >> {counter}; wc -l < {counter}']
    runner = Runner()
    with runner.reading():
        first = runner.run(script, timeout=10, quiet=True)
        again = runner.run(script, timeout=10, quiet=True)
        with runner.reading():  # nested: the same answers
            inner = runner.run(script, timeout=10, quiet=True)
        loud = runner.run(script, timeout=10)
    after = runner.run(script, timeout=10, quiet=True)
    assert first.stdout.strip() == again.stdout.strip() == inner.stdout.strip() == "1"
    assert loud.stdout.strip() == "2"
    assert after.stdout.strip() == "3"


def test_reading_spans_are_per_thread(tmp_path):
    runner = Runner()
    seen: list[str] = []
    script = ["sh", "-c", f"echo x >> {tmp_path / 'count'}; wc -l < {tmp_path / 'count'}"]

    def other() -> None:
        seen.append(runner.run(script, timeout=10, quiet=True).stdout.strip())

    with runner.reading():
        runner.run(script, timeout=10, quiet=True)
        thread = threading.Thread(target=other)
        thread.start()
        thread.join()
    assert seen == ["2"]  # the other thread is not inside this span: it ran the command


def test_preflight_says_what_needs_a_missing_tool():
    with pytest.raises(MissingToolsError) as caught:
        preflight({"sh": "", "no-such-smbclient": "the smb exports of drive 'data'"})
    assert str(caught.value) == ("missing programs: no-such-smbclient (package no-such-smbclient; for the smb "
                                 "exports of drive 'data'); install them and start bsud again")
