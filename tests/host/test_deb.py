"""scripts/build-deb: what the package holds, that lintian finds no error in it, that its bundled environment runs on
Debian's own python3, and that installing, upgrading, removing and purging it leave nothing of it behind (in a
throwaway overlay of this machine's root: tests/host/deb_sandbox.py). Driving its unit under systemd is the VM's
systemd lane: tests/vm/test_systemd.py.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import re
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest

pytestmark = pytest.mark.host

ROOT = Path(__file__).resolve().parents[2]
LIB = "opt/bsud/lib"


@pytest.fixture(scope="module")
def deb(tmp_path_factory) -> Path:
    for tool, package in (("dpkg-deb", "dpkg"), ("dpkg-shlibdeps", "dpkg-dev")):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is missing (package {package})")
    out = tmp_path_factory.mktemp("deb")
    built = subprocess.run([str(ROOT / "scripts" / "build-deb"), str(out)], capture_output=True, text=True,
                           timeout=600)
    assert built.returncode == 0, built.stderr[-3000:]
    (found,) = out.glob("bsud_*.deb")
    return found


@pytest.fixture(scope="module")
def tree(deb: Path, tmp_path_factory) -> Path:
    """The package's files (dpkg-deb -x) and its control files under DEBIAN (dpkg-deb -e)."""
    where = tmp_path_factory.mktemp("tree")
    subprocess.run(["dpkg-deb", "-x", str(deb), str(where)], check=True)
    subprocess.run(["dpkg-deb", "-e", str(deb), str(where / "DEBIAN")], check=True)
    return where


def control(deb: Path) -> dict[str, str]:
    info = subprocess.run(["dpkg-deb", "-f", str(deb)], capture_output=True, text=True, check=True).stdout
    return dict(line.split(": ", 1) for line in info.splitlines() if ": " in line and not line.startswith(" "))


def names(relation: str) -> set[str]:
    return {d.strip().split(" ")[0] for d in relation.split(",")}


def test_the_package_declares_what_it_needs_and_keeps_the_config(deb: Path):
    import bsud

    fields = control(deb)
    assert fields["Package"] == "bsud" and fields["Version"] == bsud.__version__
    assert deb.name == f"bsud_{bsud.__version__}_{fields['Architecture']}.deb"
    depends = names(fields["Depends"])
    assert {"lvm2", "btrfs-progs", "udev", "mount", "python3"} <= depends
    # From dpkg-shlibdeps on the bundled extensions (pydantic-core), versioned; no Essential package unversioned.
    assert re.search(r"libc6 \(>= [\d.]+\)", fields["Depends"]), fields["Depends"]
    assert "util-linux" not in depends
    assert {"nfs-kernel-server", "nfs-ganesha", "nfs-ganesha-vfs", "samba", "smbclient", "targetcli-fb",
            "resource-agents", "drbd-utils"} <= names(fields["Suggests"])
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    maintainer = project["maintainers"][0]
    assert fields["Maintainer"] == f"{maintainer['name']} <{maintainer['email']}>"
    assert "localhost" not in fields["Maintainer"]
    assert fields.get("Homepage") == (project.get("urls") or {}).get("Homepage")  # none set: no field
    conffiles = subprocess.run(["dpkg-deb", "--info", str(deb), "conffiles"], capture_output=True, text=True,
                               check=True).stdout.split()
    assert conffiles == ["/etc/osc/bsud.json"]
    listing = subprocess.run(["dpkg-deb", "-c", str(deb)], capture_output=True, text=True, check=True).stdout
    modes = {line.split()[-1]: line.split()[0] for line in listing.splitlines()}
    assert modes["./etc/osc/bsud.json"] == "-rw-------"
    assert modes["./usr/bin/bsud"] == "-rwxr-xr-x"
    for path in ("./usr/share/doc/bsud/copyright", "./usr/share/doc/bsud/changelog.gz",
                 "./usr/share/man/man8/bsud.8.gz", "./usr/share/lintian/overrides/bsud"):
        assert modes[path] == "-rw-r--r--", path
    assert not any(path.startswith("./var/lib/bsud") for path in modes)  # the local provider's volumes: never ours
    assert not any("__pycache__" in path for path in modes)  # byte-code is postinst's, removed by prerm
    assert not any(path.startswith(("./usr/share/man", "./usr/share/doc")) and "make-" in path for path in modes)


def test_every_unit_is_installed_running_the_packaged_bsud(tree: Path):
    units = sorted((ROOT / "packaging").glob("*.service"))
    assert units
    for unit in units:
        installed = (tree / "lib" / "systemd" / "system" / unit.name).read_text()
        assert "/usr/local/" not in installed, unit.name
        assert installed == unit.read_text().replace("/usr/local/bin/bsud", "/usr/bin/bsud"), unit.name
    assert "ExecStart=/usr/bin/bsud -c /etc/osc/bsud.json run" in \
        (tree / "lib" / "systemd" / "system" / "bsud.service").read_text()


def test_the_bundled_environment_runs_on_debians_python(tree: Path):
    if not Path("/usr/bin/python3").exists():
        pytest.skip("/usr/bin/python3 (Debian's python3) is missing")
    wrapper = (tree / "usr" / "bin" / "bsud").read_text()
    assert wrapper.startswith("#!/usr/bin/python3") and '"/opt/bsud/lib"' in wrapper
    # The wrapper, pointed at the extracted tree instead of /opt: bsud checks the shipped config.
    code = wrapper.replace('"/opt/bsud/lib"', repr(str(tree / LIB)))
    run = subprocess.run(["/usr/bin/python3", "-s", "-B", "-c", code, "check-config", "-c",
                          str(tree / "etc" / "osc" / "bsud.json")], capture_output=True, text=True, timeout=120,
                         env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}, cwd=tree)
    assert run.returncode == 0, run.stderr
    assert '"provider": "outscale"' in run.stdout
    assert "no drives are defined" in run.stderr


def test_lintian_reports_no_error(deb: Path):
    if shutil.which("lintian") is None:
        pytest.skip("lintian is missing (package lintian; scripts/setup installs it)")
    done = subprocess.run(["lintian", "--pedantic", "--display-info", str(deb)], capture_output=True, text=True,
                          timeout=600)
    errors = [line for line in done.stdout.splitlines() if line.startswith("E:")]
    assert not errors, "\n".join(errors[:40])
    # Every override shipped is still needed (lintian says so of one that matches nothing).
    assert "unused-override" not in done.stdout and "mismatched-override" not in done.stdout, done.stdout


def walk(parser) -> list[list[str]]:
    """Every subcommand path of an argparse parser (nested ones too)."""
    import argparse

    paths: list[list[str]] = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            seen: set[int] = set()
            for name, sub in action.choices.items():  # aliases map to the same parser: its first name only
                if id(sub) not in seen:
                    seen.add(id(sub))
                    paths.append([name])
                    paths += [[name, *rest] for rest in walk(sub)]
    return paths


def test_the_man_page_renders_without_warnings_and_names_every_subcommand(tree: Path):
    from bsud.cli import build_parser

    page = tree / "usr" / "share" / "man" / "man8" / "bsud.8.gz"
    with gzip.open(page) as fh:
        assert fh.read(4) == b".TH "
    assert page.read_bytes()[4:8] == b"\0\0\0\0", "gzip -n: no timestamp in the header"
    # As lintian checks man pages (its groff-message tag is what this prints on stderr).
    checked = subprocess.run(["man", "--warnings", "-E", "UTF-8", "-l", "-Tutf8", "-Z", str(page)],
                             capture_output=True, text=True, timeout=60,
                             env={"PATH": "/usr/bin:/bin", "LC_ALL": "C.UTF-8"})
    assert checked.returncode == 0 and checked.stderr == "", checked.stderr
    shown = subprocess.run(["man", "-l", str(page)], capture_output=True, text=True, timeout=60,
                           env={"PATH": "/usr/bin:/bin", "MANWIDTH": "200", "LC_ALL": "C.UTF-8"}).stdout
    headings = {line.strip() for line in shown.splitlines() if line.startswith("   ") and not line.startswith("    ")}
    for path in walk(build_parser()):
        assert " ".join(path) in headings, f"bsud {' '.join(path)} is not in bsud(8)"
    for section in ("NAME", "SYNOPSIS", "OPTIONS", "COMMANDS", "FILES", "EXIT STATUS", "SEE ALSO"):
        assert f"\n{section}\n" in shown, section
    for path in ("/etc/osc/bsud.json", "/run/bsud/status.json"):
        assert path in shown
    assert "--config" in shown and "‐" not in shown.split("SEE ALSO")[0].split("OPTIONS")[1], \
        "options must be typed with ASCII minus signs"


def paragraphs(text: str) -> list[dict[str, str]]:
    out = []
    for block in re.split(r"\n\s*\n", text.strip()):
        fields: dict[str, str] = {}
        key = None
        for line in block.splitlines():
            if line.startswith((" ", "\t")) and key:
                fields[key] += "\n" + line[1:]
            else:
                key, _, value = line.partition(":")
                fields[key] = value.strip()
        out.append(fields)
    return out


def test_the_copyright_covers_bsud_and_every_bundled_distribution(tree: Path):
    import importlib.metadata

    copyright_file = tree / "usr" / "share" / "doc" / "bsud" / "copyright"
    header, *rest = paragraphs(copyright_file.read_text())
    assert header["Format"] == "https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/"
    files = [p for p in rest if "Files" in p]
    standalone = {p["License"].splitlines()[0] for p in rest if "Files" not in p}
    assert files[0]["Files"] == "*" and files[0]["License"].startswith("BSD-3-Clause\n")
    assert "Redistribution and use in source and binary forms" in files[0]["License"]
    def licences(paragraph: dict[str, str]) -> set[str]:
        name = paragraph["License"].split("\n")[0]
        return {w for w in re.split(r"[\s()]+", name) if w and w not in ("and", "or", "with")}

    # A licence that is not in /usr/share/common-licenses (MIT, BSD, PSF…) is there in full: in the paragraph of
    # the files under it (a distribution's, or a file it bundles from another project).
    in_full = {lic for p in files if len(p["License"].split("\n")) > 5 for lic in licences(p)}
    for paragraph in files:
        assert paragraph.get("Copyright"), paragraph["Files"]
        if len(paragraph["License"].split("\n")) == 1:
            assert licences(paragraph) <= standalone, f"{paragraph['Files']}: no text and no License paragraph"
        for lic in licences(paragraph) - standalone:
            assert lic in in_full, f"{paragraph['Files']}: the {lic} text must be there in full"
    for name in standalone:  # referred to, never copied: policy wants /usr/share/common-licenses used
        assert Path("/usr/share/common-licenses", name.rstrip("+")).exists(), name
    patterns = {pattern for p in files for pattern in p["Files"].split()}
    comments = "\n".join(p.get("Comment", "") for p in files)
    bundled = list(importlib.metadata.distributions(path=[str(tree / LIB)]))
    assert len(bundled) > 10
    for dist in bundled:
        info = next(f.parts[0] for f in dist.files if f.parts[0].endswith(".dist-info"))
        if dist.metadata["Name"] == "bsud":
            continue  # Files: *
        assert f"{LIB}/{info}/*" in patterns, f"{info} is missing from the copyright file"
        assert f"{dist.metadata['Name']} {dist.metadata['Version']};" in comments, info


def test_the_changelog_is_the_packages_version(tree: Path, deb: Path):
    with gzip.open(tree / "usr" / "share" / "doc" / "bsud" / "changelog.gz", "rt") as fh:
        text = fh.read()
    assert text == (ROOT / "packaging" / "debian" / "changelog").read_text()
    assert re.match(rf"bsud \({re.escape(control(deb)['Version'])}\) ", text)


def test_md5sums_match_the_payload(tree: Path):
    listed = {}
    for line in (tree / "DEBIAN" / "md5sums").read_text().splitlines():
        digest, path = line.split("  ", 1)
        listed[path] = digest
    conffiles = {c.lstrip("/") for c in (tree / "DEBIAN" / "conffiles").read_text().split()}
    payload = {str(p.relative_to(tree)) for p in tree.rglob("*")
               if p.is_file() and not p.is_symlink() and p.relative_to(tree).parts[0] != "DEBIAN"}
    assert set(listed) == payload - conffiles
    for path, digest in listed.items():
        assert hashlib.md5((tree / path).read_bytes()).hexdigest() == digest, path


def test_maintainer_scripts_go_through_deb_systemd_helper_and_never_touch_a_drive(tree: Path):
    scripts = {name: (tree / "DEBIAN" / name).read_text() for name in ("postinst", "prerm", "postrm")}
    for name, text in scripts.items():
        assert text.startswith("#!/bin/sh\n") and "\nset -e\n" in text, name
        subprocess.run(["sh", "-n", str(tree / "DEBIAN" / name)], check=True)
        code = [line.split("#", 1)[0] for line in text.splitlines()]
        for line in code:
            if "systemctl" in line:
                assert line.strip() == "systemctl --system daemon-reload >/dev/null || true", f"{name}: {line}"
            assert not re.search(r"\b(umount|lvremove|vgremove|pvremove|wipefs|losetup|btrfs|dmsetup|mkfs)\b",
                                 line), f"{name} must not touch a drive: {line}"
    postinst, prerm, postrm = scripts["postinst"], scripts["prerm"], scripts["postrm"]
    assert "deb-systemd-helper update-state 'bsud.service'" in postinst
    assert "deb-systemd-invoke try-restart 'bsud.service'" in postinst
    assert re.search(r"if deb-systemd-helper --quiet was-enabled 'bsud.service'; then\s+# .*\s+"
                     r"deb-systemd-helper enable", postinst), "enabled only if it was enabled before"
    assert "compileall" in postinst and "__pycache__" in prerm
    assert "deb-systemd-invoke stop 'bsud.service'" in prerm
    assert "deb-systemd-helper purge 'bsud.service'" in postrm and "deb-systemd-helper unmask" in postrm
    for unit in (ROOT / "packaging").glob("*@.service"):  # templates are never enabled nor started
        assert unit.name not in postinst + prerm + postrm


def test_install_upgrade_remove_purge_leave_nothing_but_the_volumes(deb: Path):
    for tool in ("unshare", "chroot", "dpkg"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is missing")
    if Path("/opt/bsud").exists() or Path("/var/lib/dpkg/info/bsud.list").exists():
        pytest.skip("bsud is installed on this machine: the sandbox compares against this machine's root")
    with open("/proc/filesystems") as fh:
        if "overlay" not in fh.read():
            pytest.skip("needs overlayfs in the kernel")
    done = subprocess.run(["unshare", "--mount", "--propagation", "private", str(ROOT / ".venv" / "bin" / "python"),
                           str(Path(__file__).with_name("deb_sandbox.py")), str(deb)],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout)
    assert report["install"]["rc"] == 0, report["install"]["stderr"]
    assert report["install"]["stderr"] == ""
    assert report["version"].startswith("bsud ")
    assert report["compiled"], "postinst byte-compiles /opt/bsud/lib"
    assert report["config_mode"] == "0o600"
    assert report["enabled_at_install"] is False
    assert report["dsh_state"] == ["/etc/systemd/system/multi-user.target.wants/bsud.service"]
    assert report["reinstall"]["rc"] == 0 and report["reinstall"]["stderr"] == ""
    assert report["reinstall"]["enabled_kept"] and report["reinstall"]["compiled"]
    assert report["remove"]["rc"] == 0 and "not empty" not in report["remove"]["stderr"]
    assert not report["remove"]["opt_left"] and report["remove"]["config_kept"] and report["remove"]["volume_kept"]
    assert report["purge"]["rc"] == 0
    assert report["left"] == [], report["left"][:20]
    assert report["upper_bsud"] == ["/var/lib/bsud"], "only the directory holding the local provider's volume"
    assert report["volume_kept"], "a volume is never deleted by the package"
    assert not report["run_bsud_left"] and not report["enable_link_left"] and report["dsh_left"] == []
    assert not report["etc_osc_left"] and report["opt_exists"]
    assert not report["empty_state_dir_left"], "purge removes /var/lib/bsud once it is empty"


def test_build_deb_refuses_a_changelog_that_is_not_the_version(tmp_path: Path):
    copy = tmp_path / "checkout"
    copy.mkdir()
    for item in ("scripts", "packaging", "bsud", "pyproject.toml", "README.md", "LICENSE", "docs",
                 "config.example.json"):
        source = ROOT / item
        (shutil.copytree if source.is_dir() else shutil.copy)(source, copy / item)
    (copy / ".venv").symlink_to(ROOT / ".venv")
    changelog = copy / "packaging" / "debian" / "changelog"
    changelog.write_text(re.sub(r"^bsud \([^)]*\)", "bsud (0.0.1)", changelog.read_text()))
    done = subprocess.run([str(copy / "scripts" / "build-deb"), str(tmp_path / "out")], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 1
    assert done.stderr.count("\n") == 1 and "newest entry is 0.0.1 but bsud.__version__ is" in done.stderr, \
        done.stderr
    assert not (tmp_path / "out").exists()
