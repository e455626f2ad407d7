"""scripts/build-deb: what the package holds, and that its bundled environment runs on Debian's own python3.
(Installing it and driving its unit under systemd is the VM's systemd lane: tests/vm/test_systemd.py.)"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

pytestmark = pytest.mark.host

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def deb(tmp_path_factory) -> Path:
    if shutil.which("dpkg-deb") is None:
        pytest.skip("dpkg-deb is missing (package dpkg)")
    out = tmp_path_factory.mktemp("deb")
    subprocess.run([str(ROOT / "scripts" / "build-deb"), str(out)], check=True, capture_output=True, timeout=600)
    (built,) = out.glob("bsud_*.deb")
    return built


def test_the_package_declares_what_it_needs_and_keeps_the_config(deb: Path):
    import bsud

    info = subprocess.run(["dpkg-deb", "-f", str(deb)], capture_output=True, text=True, check=True).stdout
    fields = dict(line.split(": ", 1) for line in info.splitlines() if ": " in line and not line.startswith(" "))
    assert fields["Package"] == "bsud" and fields["Version"] == bsud.__version__
    assert deb.name == f"bsud_{bsud.__version__}_{fields['Architecture']}.deb"
    depends = {d.strip().split(" ")[0] for d in fields["Depends"].split(",")}
    assert {"lvm2", "btrfs-progs", "udev", "python3"} <= depends
    conffiles = subprocess.run(["dpkg-deb", "--info", str(deb), "conffiles"], capture_output=True, text=True,
                               check=True).stdout.split()
    assert conffiles == ["/etc/osc/bsud.json"]
    listing = subprocess.run(["dpkg-deb", "-c", str(deb)], capture_output=True, text=True, check=True).stdout
    modes = {line.split()[-1]: line.split()[0] for line in listing.splitlines()}
    assert modes["./etc/osc/bsud.json"] == "-rw-------"
    assert modes["./usr/bin/bsud"] == "-rwxr-xr-x"
    assert "./lib/systemd/system/bsud.service" in modes
    assert not any(path.startswith("./var/lib/bsud") for path in modes)  # the local provider's volumes: never ours


def test_the_bundled_environment_runs_on_debians_python(deb: Path, tmp_path: Path):
    if not Path("/usr/bin/python3").exists():
        pytest.skip("/usr/bin/python3 (Debian's python3) is missing")
    subprocess.run(["dpkg-deb", "-x", str(deb), str(tmp_path)], check=True)
    unit = (tmp_path / "lib" / "systemd" / "system" / "bsud.service").read_text()
    assert "ExecStart=/usr/bin/bsud -c /etc/osc/bsud.json run" in unit
    wrapper = (tmp_path / "usr" / "bin" / "bsud").read_text()
    assert wrapper.startswith("#!/usr/bin/python3") and '"/opt/bsud/lib"' in wrapper
    # The wrapper, pointed at the extracted tree instead of /opt: bsud checks the shipped config.
    code = wrapper.replace('"/opt/bsud/lib"', repr(str(tmp_path / "opt" / "bsud" / "lib")))
    run = subprocess.run(["/usr/bin/python3", "-s", "-c", code, "check-config", "-c",
                          str(tmp_path / "etc" / "osc" / "bsud.json")], capture_output=True, text=True, timeout=120,
                         env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}, cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    assert '"provider": "outscale"' in run.stdout
    assert "no drives are defined" in run.stderr
