"""The Debian package's build-time generators: scripts/make-manpage (bsud(8) from the CLI's own parser) and
scripts/make-copyright (DEP-5 from the bundled distributions' metadata). The built package itself is checked in
tests/host/test_deb.py."""

from __future__ import annotations

import argparse
import importlib.machinery
import importlib.util
import subprocess
import sys
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[2]


def load(script: str) -> ModuleType:
    loader = importlib.machinery.SourceFileLoader(script.replace("-", "_"), str(ROOT / "scripts" / script))
    spec = importlib.util.spec_from_loader(loader.name, loader)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


def test_the_man_page_documents_any_subcommand_the_parser_has(monkeypatch):
    manpage = load("make-manpage")
    real = manpage.cli.build_parser

    def with_new_commands() -> argparse.ArgumentParser:
        parser = real()
        sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        waiting = sub.add_parser("wait-for-it", help="waits for the drive named DRIVE")
        waiting.add_argument("drive", metavar="DRIVE", help="the drive's name")
        waiting.add_argument("--timeout", type=float, default=60.0,
                             help="give up after this long (default: %(default)s)")
        nested = sub.add_parser("drive", help="drive commands").add_subparsers(dest="what", metavar="WHAT")
        nested.add_parser("forget", help=".dot first, then a back\\slash")
        return parser

    monkeypatch.setattr(manpage.cli, "build_parser", with_new_commands)
    page = manpage.page("2026-01-02")
    assert '.TH BSUD 8 "2026-01-02"' in page
    assert ".SS wait\\-for\\-it\nwaits for the drive named DRIVE" in page
    assert "\\fBbsud wait\\-for\\-it\\fR" in page and "\\fIDRIVE\\fR" in page
    assert "give up after this long (default: 60.0)" in page
    assert ".SS drive forget\n\\&.dot first, then a back\\eslash\n" in page
    for name in ("run", "status", "plan", "check\\-config"):
        assert f".SS {name}\n" in page
    assert "\n.SH EXIT STATUS\n.TP\n0\n" in page and "\n.TP\n2\n" in page
    # No text line starts with a control character, and nothing outside ASCII reaches roff unescaped.
    body = [line for line in page.splitlines() if not line.startswith((".", "\\"))]
    assert all(not line.startswith(("'", " ")) for line in body)
    assert page.isascii()


def test_the_man_page_is_valid_roff(tmp_path: Path):
    out = subprocess.run([sys.executable, str(ROOT / "scripts" / "make-manpage"), "--date", "2026-01-02"],
                         capture_output=True, text=True, check=True).stdout
    (tmp_path / "bsud.8").write_text(out)
    checked = subprocess.run(["groff", "-man", "-ww", "-z", "-Tutf8", str(tmp_path / "bsud.8")],
                             capture_output=True, text=True)
    assert checked.returncode == 0 and checked.stderr == "", checked.stderr


def fake_dist(lib: Path, name: str, version: str, metadata: str, files: dict[str, str]) -> None:
    info = lib / f"{name}-{version}.dist-info"
    (info / "licenses").mkdir(parents=True)
    (lib / name).mkdir()
    (lib / name / "__init__.py").write_text("")
    (info / "METADATA").write_text(f"Metadata-Version: 2.4\nName: {name}\nVersion: {version}\n{metadata}")
    record = [f"{name}/__init__.py,,", f"{info.name}/METADATA,,", f"{info.name}/RECORD,,"]
    for file, text in files.items():
        (info / "licenses" / file).write_text(text)
        record.append(f"{info.name}/licenses/{file},,")
    (info / "RECORD").write_text("\n".join(record) + "\n")


def test_the_copyright_has_each_distribution_with_its_licence_text(tmp_path: Path):
    lib = tmp_path / "lib"
    fake_dist(lib, "bsud", "9.9", "License: BSD-3-Clause\nLicense-File: LICENSE\n",
              {"LICENSE": "Copyright (c) 2026, the bsud authors\n\nRedistribution and use in source and binary..."})
    fake_dist(lib, "alpha", "1.0", "License-Expression: MIT\nLicense-File: LICENSE\n",
              {"LICENSE": "MIT License\n\nCopyright (c) 2020 Alpha Author\n\nPermission is hereby granted, ..."})
    fake_dist(lib, "beta", "2.0", "License-Expression: LGPL-2.1-or-later\nAuthor-email: Beta Person <b@example.org>\n",
              {})
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "make-copyright"), str(lib), "opt/bsud/lib"],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    text = done.stdout
    assert text.index("Files: *\n") < text.index("Files: opt/bsud/lib/alpha")
    alpha = text[text.index("Files: opt/bsud/lib/alpha"):].split("\n\n")[0]
    assert "Copyright: 2020 Alpha Author" in alpha and " Permission is hereby granted" in alpha
    assert "Comment: alpha 1.0;" in alpha
    beta = text[text.index("Files: opt/bsud/lib/beta"):].split("\n\n")[0]
    assert "License: LGPL-2.1+\n" in beta and "Copyright: Beta Person" in beta
    assert "License: LGPL-2.1+\n On Debian systems" in text and "/usr/share/common-licenses/LGPL-2.1." in text


def test_the_copyright_refuses_a_distribution_whose_licence_it_cannot_tell(tmp_path: Path):
    lib = tmp_path / "lib"
    fake_dist(lib, "bsud", "9.9", "License: BSD-3-Clause\n", {"LICENSE": "Copyright (c) 2026, the bsud authors\n"})
    fake_dist(lib, "murky", "0.1", "License: Dual License\nClassifier: License :: OSI Approved :: BSD License\n"
              "Classifier: License :: OSI Approved :: Apache Software License\n", {"LICENSE": "..."})
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "make-copyright"), str(lib), "opt/bsud/lib"],
                          capture_output=True, text=True)
    assert done.returncode == 1 and done.stdout == ""
    assert done.stderr.count("\n") == 1 and "cannot tell the licence of murky 0.1" in done.stderr
