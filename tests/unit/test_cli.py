"""The bsud command as a user runs it: exit codes and one-line errors, never a traceback."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from bsud import __version__

ROOT = Path(__file__).resolve().parents[2]


def bsud(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    import os

    full_env = {k: v for k, v in os.environ.items() if not k.startswith(("OSC_", "BSUD_"))}
    full_env.update(env or {})
    return subprocess.run([sys.executable, "-m", "bsud", *args], capture_output=True, text=True, timeout=60,
                          env=full_env, cwd=ROOT)


def test_version():
    out = bsud("--version")
    assert out.returncode == 0 and out.stdout.strip() == f"bsud {__version__}"


def test_help_lists_commands():
    out = bsud("--help")
    assert out.returncode == 0
    assert "check-config" in out.stdout and "--config" in out.stdout


def test_check_config_on_example_prints_effective_config():
    out = bsud("check-config", "-c", "config.example.json")
    assert out.returncode == 0, out.stderr
    shown = json.loads(out.stdout)
    assert shown["drives"][0]["initial-size-gib"] == 2
    assert shown["drives"][0]["min-used-space-perc"] == 40


@pytest.mark.parametrize(
    ("doc", "expected"),
    [
        ('{"drives": [{"name": "d", "target": "online"}]}', "field 'mount-path': required key is missing"),
        ('{"drives": [{"name": "d", "target": "online", "mount-path": "/m", "colour": 1}]}', "field 'colour'"),
        ('{"drives": [{"name": "d", "target": "online", "mount-path": "/m", "initial-size-gib": "ten"}]}',
         "must be a whole number"),
        ('{"drives": [{"name": "a b", "target": "online", "mount-path": "/m"}]}', "not a usable drive name"),
        ('{"drives": [{"name": "d", "target": "online", "mount-path": "/m", "min-used-space-perc": 85}]}',
         "need 0 < min-used-space-perc"),
        ('{"drives": [{"name": "d", "target": "online", "mount-path": "m"}]}', "must be an absolute path"),
        ('{"drives": [{"name": "d", "target": "online", "mount-path": "/"}]}', "must not be '/'"),
        ('{"drives": [{"name": "d", "target": "online", "mount-path": "/a"},'
         ' {"name": "d", "target": "online", "mount-path": "/b"}]}', "duplicate drive name"),
        ("{not json", "invalid JSON"),
    ],
    ids=["missing", "unknown", "type", "name", "min-max", "relative", "root", "duplicate", "json"],
)
def test_malformed_config_exits_nonzero_with_one_line(tmp_path, doc, expected):
    path = tmp_path / "bad.json"
    path.write_text(doc)
    out = bsud("check-config", "-c", str(path))
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr
    assert expected in lines[0] and str(path) in lines[0]
    assert "Traceback" not in out.stderr


def test_missing_config_file(tmp_path):
    out = bsud("check-config", "-c", str(tmp_path / "absent.json"))
    assert out.returncode == 2
    assert "file not found" in out.stderr and "Traceback" not in out.stderr


def test_secrets_never_printed(tmp_path):
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"authentication": {"access-key": "AKIAEXAMPLEKEY", "secret-key": "TopSecret123"},
                                "drives": [{"name": "d", "target": "online", "mount-path": "/mnt/d"}]}))
    path.chmod(0o644)
    out = bsud("check-config", "-c", str(path), "--log-level", "debug")
    assert out.returncode == 0
    assert "TopSecret123" not in out.stdout + out.stderr
    assert "chmod 600" in out.stderr


def local_config(tmp_path: Path, **daemon: object) -> Path:
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"cloud": {"provider": "local", "state-dir": str(tmp_path / "state")},
                                "daemon": {"status-file": str(tmp_path / "status.json"), **daemon},
                                "drives": [{"name": "data", "target": "online", "mount-path": str(tmp_path / "m")},
                                           {"name": "old", "target": "offline", "mount-path": str(tmp_path / "o")}]}))
    return path


def test_a_reader_that_stops_reading_ends_the_command_quietly(tmp_path):
    """`bsud check-config | head -1`: the pipe closes under bsud; no BrokenPipeError traceback, SIGPIPE's status."""
    import os

    config = tmp_path / "big.json"  # more than a pipe holds (64 KiB), so that bsud is still writing when it closes
    config.write_text(json.dumps({"cloud": {"provider": "local", "state-dir": str(tmp_path / "state")},
                                  "drives": [{"name": f"d{n}", "target": "offline", "mount-path": f"/mnt/d{n}"}
                                             for n in range(200)]}))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OSC_", "BSUD_"))}
    proc = subprocess.Popen([sys.executable, "-m", "bsud", "check-config", "-c", str(config)], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    assert proc.stdout is not None
    proc.stdout.readline()
    proc.stdout.close()  # as `head -1` does once it has its line
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 141 and b"Traceback" not in err and b"BrokenPipe" not in err, err


def test_wait_online_names_what_it_waits_for_and_refuses_what_never_comes(tmp_path):
    config = str(local_config(tmp_path))
    out = bsud("wait-online", "-c", config, "nope")
    assert out.returncode == 2 and out.stderr.strip() == f"bsud: wait-online: 'nope' not in {config} (its drives: " \
                                                         "data, old)"
    out = bsud("wait-online", "-c", config, "old")
    assert out.returncode == 1 and out.stderr.strip() == f"bsud: wait-online: drive 'old' has target offline in " \
                                                         f"{config}: it will not be mounted"
    out = bsud("wait-online", "-c", config, "--timeout", "1")
    assert out.returncode == 1
    assert out.stderr.strip() == f"bsud: wait-online: drive 'data' is not mounted on {tmp_path / 'm'} after 1 s " \
                                 "(no bsud daemon is running); see bsud status"


def test_reload_checks_the_config_before_signalling(tmp_path):
    path = local_config(tmp_path)
    out = bsud("reload", "-c", str(path))
    assert out.returncode == 1
    assert out.stderr.strip() == f"bsud: reload: no bsud daemon is running with status file {tmp_path}/status.json"
    path.write_text('{"drives": [{"name": "data", "target": "delete", "target": "online"}]}')
    out = bsud("reload", "-c", str(path), "--pid", "1")  # never signalled: the config is refused first
    assert out.returncode == 2 and "repeated key" in out.stderr and "mount-path" in out.stderr


def test_delete_drive_asks_first_and_refuses_without_a_terminal(tmp_path):
    out = bsud("delete-drive", "-c", str(local_config(tmp_path)), "data")
    assert out.returncode == 1
    assert out.stderr.strip() == ("bsud: delete-drive: this deletes volumes and their data; refusing without --yes "
                                  "(stdin is not a terminal to ask on)")
