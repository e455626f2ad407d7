"""Layers import downward only (the rules below; docs/architecture.md draws them): the processes (cli, commands,
daemon, drives, worker, sampler) → reconcile → cloud | host | exports | ha → config → foundation (errors, logs,
naming, runner, ratelimit, retry, storage, lock).

The planner and its model do no I/O: they import no boto3, subprocess, pyudev, nor the cloud or host layers.
"""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[2] / "bsud"
ROOT = PKG.parent


def imports_of(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
    return found


def modules(subdir: str) -> list[Path]:
    return sorted((PKG / subdir).rglob("*.py")) if subdir else []


PURE = [PKG / "reconcile" / "planner.py", PKG / "reconcile" / "model.py", PKG / "reconcile" / "assembly.py",
        PKG / "reconcile" / "scaling.py", PKG / "reconcile" / "trigger.py", PKG / "reconcile" / "removal.py",
        PKG / "reconcile" / "shrink.py", PKG / "reconcile" / "phase.py", PKG / "reconcile" / "leaving.py",
        PKG / "reconcile" / "replicated.py", PKG / "reconcile" / "peer.py"]
FORBIDDEN_IN_PURE = ("boto3", "botocore", "subprocess", "pyudev", "bsud.cloud", "bsud.host", "bsud.runner", "os",
                     "socket", "time")


@pytest.mark.parametrize("path", PURE, ids=lambda p: p.name)
def test_planner_does_no_io(path: Path):
    bad = {m for m in imports_of(path) if any(m == f or m.startswith(f + ".") for f in FORBIDDEN_IN_PURE)}
    assert not bad, f"{path.name} imports {bad}"


RULES = [
    ("cloud", ("bsud.host", "bsud.reconcile", "bsud.daemon", "bsud.cli")),
    ("host", ("bsud.cloud", "bsud.reconcile", "bsud.daemon", "bsud.cli", "boto3", "bsud.exports", "bsud.ha")),
    # The export kinds: below the config (which builds its union from them) and the HA generator (which builds
    # gateways from them); of bsud.ha only its vocabulary, bsud.ha.agent (checked below).
    ("exports", ("bsud.cloud", "bsud.reconcile", "bsud.daemon", "bsud.worker", "bsud.cli", "bsud.config",
                 "bsud.ha.gateway", "bsud.ha.ocf", "bsud.ha.promoter")),
    ("ha", ("bsud.cloud", "bsud.reconcile", "bsud.daemon", "bsud.worker", "bsud.cli", "subprocess")),
    ("reconcile", ("bsud.daemon", "bsud.drives", "bsud.worker", "bsud.sinks", "bsud.metrics", "bsud.cli")),
]


@pytest.mark.parametrize(("layer", "forbidden"), RULES, ids=[r[0] for r in RULES])
def test_layers_import_downward(layer: str, forbidden: tuple[str, ...]):
    for path in modules(layer):
        bad = {m for m in imports_of(path) if any(m == f or m.startswith(f + ".") for f in forbidden)}
        assert not bad, f"bsud/{layer}/{path.name} imports {bad}"


@pytest.mark.parametrize("base", ["config/__init__.py", "config/catalogue.py", "config/schema.py", "config/load.py",
                                  "config/rules.py",
                                  "errors.py", "logs.py", "naming.py", "runner.py", "ratelimit.py", "storage.py",
                                  "retry.py", "lock.py"])
def test_foundation_imports_nothing_above(base: str):
    bad = {m for m in imports_of(PKG / base)
           if m.startswith(("bsud.cloud", "bsud.host", "bsud.reconcile", "bsud.daemon", "bsud.cli"))}
    assert not bad


def test_host_reads_only_the_catalogue_of_the_config():
    """host/ needs the layout names, not the pydantic schema: it imports ``bsud.config.catalogue`` alone (the
    exports' models are ``bsud.exports``', which is above host/)."""
    for path in modules("host"):
        bad = {m for m in imports_of(path)
               if m.startswith("bsud.config") and m != "bsud.config.catalogue"}
        assert not bad, f"bsud/host/{path.relative_to(PKG / 'host')} imports {bad}"


def test_a_kind_is_one_module_and_one_registry_entry():
    """Every kind the registry lists declares itself in its own module (``PLUGIN``); nothing else names kinds:
    config, the HA generator and the daemon derive their tables from ``bsud.exports.KINDS``."""
    from bsud.exports import KINDS

    assert all(plugin.exporter.kind == name for name, plugin in KINDS.items())
    for path in [*modules("config"), *modules("ha"), PKG / "daemon.py", PKG / "runner.py"]:
        for kind in ("NfsExport", "SmbExport", "IscsiExport", "NvmeofExport"):
            assert kind not in path.read_text(), f"{path.relative_to(PKG)} names {kind}"


def test_no_shell_anywhere():
    for path in PKG.rglob("*.py"):
        text = path.read_text()
        assert "shell=True" not in text, path
        assert "os.system(" not in text and "os.popen(" not in text, path


@pytest.mark.parametrize("name", ["bsud.service", "bsud-wait-online@.service"])
def test_systemd_units_verify_and_keep_the_hosts_mount_namespace(tmp_path: Path, name: str):
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed (package systemd)")
    bsud = Path(sys.executable).parent / "bsud"
    if not bsud.exists():
        pytest.skip(f"no bsud console script next to {sys.executable} (pip install -e .)")
    unit = (ROOT / "packaging" / name).read_text()
    settings = [line.split("=", 1)[0] for line in unit.splitlines() if line and not line.startswith(("#", "["))]
    for option in ("ProtectSystem", "PrivateDevices", "PrivateTmp", "ProtectHome", "PrivateMounts", "ProtectKernel",
                   "ProtectControlGroups", "ProtectProc", "ReadWritePaths", "PrivateUsers", "TemporaryFileSystem"):
        assert not any(s.startswith(option) for s in settings), option  # each would give bsud a mount namespace
    # The man page is the package's (not installed here): verify the rest, beside the other unit (wait-online
    # requires bsud.service).
    for other in ("bsud.service", "bsud-wait-online@.service"):
        text = (ROOT / "packaging" / other).read_text().replace("/usr/local/bin/bsud", str(bsud))
        (tmp_path / other).write_text(text.replace("man:bsud(8)", ""))
    target = tmp_path / (name.replace("@", "@data") if "@." in name else name)
    if target.name != name:
        (tmp_path / name).rename(target)
    out = subprocess.run([analyze, "verify", str(target)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "bsud" not in out.stderr, out.stderr


def test_every_config_value_has_its_plug_in():
    """Each layout and provider the config accepts names a class in its registry (and the planner's assembly)."""
    import importlib

    from bsud.cloud import PROVIDERS, CloudProvider
    from bsud.config import Layout, Provider
    from bsud.host.layouts import LAYOUTS, StorageLayout
    from bsud.reconcile.assembly import ASSEMBLY

    assert set(LAYOUTS) == set(Layout) == set(ASSEMBLY)
    assert all(issubclass(cls, StorageLayout) and cls.kind == kind for kind, cls in LAYOUTS.items())
    assert set(PROVIDERS) == set(Provider)
    from bsud.exports import EXPORT_KINDS, EXPORTERS, KINDS

    assert set(KINDS) == set(EXPORTERS) >= set(EXPORT_KINDS)
    assert all(plugin.exporter.kind == kind for kind, plugin in KINDS.items())
    for where in PROVIDERS.values():
        module, _, name = where.partition(":")
        cls = getattr(importlib.import_module(module), name)
        assert issubclass(cls, CloudProvider) and "from_config" in cls.__dict__, where


def test_make_provider_builds_the_local_provider_from_a_config(tmp_path: Path):
    from bsud.cloud import make_provider
    from bsud.cloud.local import LocalCloud
    from bsud.config import parse_config

    config = parse_config('{"cloud": {"provider": "local", "state-dir": "%s", "instance-id": "i-x"}, "drives": []}'
                          % tmp_path, path=str(tmp_path / "bsud.json"))
    cloud = make_provider(config)
    assert isinstance(cloud, LocalCloud) and cloud.tools == ("losetup",)
