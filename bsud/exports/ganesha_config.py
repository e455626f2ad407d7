"""The file of EXPORT blocks bsud writes for a drive's nfs-ganesha exports (``<exports-dir>/<drive>.conf``), and
the export ids in it. Ids are derived from the drive and the path: stable across restarts of bsud and of ganesha,
the same on every host. Pure: no I/O.
"""

from __future__ import annotations

import hashlib
import re

from bsud.exports.base import HEADER, directory_of
from bsud.exports.nfs import NfsExport

#: Export ids bsud gives (ganesha's are 16 bits; 0 is the pseudo root, low ones are usually hand-written).
FIRST_ID, LAST_ID = 1000, 64999
def export_id(drive: str, path: str) -> int:
    digest = int(hashlib.sha256(f"{drive}/{path.strip('/')}".encode()).hexdigest(), 16)
    return FIRST_ID + digest % (LAST_ID - FIRST_ID + 1)


def pseudo_path(drive: str, export: NfsExport) -> str:
    """Where NFSv4 clients find it: ``/bsud/<drive>[/<path>]``."""
    sub = export.path.strip("/")
    return f"/bsud/{drive}" + (f"/{sub}" if sub else "")


def _quote(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def export_block(drive: str, mount_path: str, export: NfsExport) -> str:
    """One EXPORT block: the exports(5) words of the config translated (checked at load: GANESHA_OPTIONS)."""
    words = {o.partition("=")[0]: o.partition("=")[2] for o in export.options}
    squash = "all_squash" if "all_squash" in words else "no_root_squash" if "no_root_squash" in words \
        else "root_squash"
    lines = [f"EXPORT {{",
             f"    Export_Id = {export_id(drive, export.path)};",
             f"    Path = {_quote(directory_of(mount_path, export))};",
             f"    Pseudo = {_quote(pseudo_path(drive, export))};",
             "    Access_Type = None;",
             f"    Squash = {squash};",
             f"    SecType = {', '.join(words['sec'].split(':')) if words.get('sec') else 'sys'};"]
    if "anonuid" in words:
        lines.append(f"    Anonymous_Uid = {words['anonuid']};")
    if "anongid" in words:
        lines.append(f"    Anonymous_Gid = {words['anongid']};")
    if "secure" in words or "insecure" in words:
        lines.append(f"    PrivilegedPort = {'true' if 'secure' in words else 'false'};")
    lines += ["    FSAL {", "        Name = VFS;", "    }",
              "    CLIENT {",
              f"        Clients = {', '.join(export.clients)};",  # ganesha takes them bare (checked at load)
              f"        Access_Type = {'RO' if 'ro' in words else 'RW'};",
              "    }",
              "}"]
    return "\n".join(lines) + "\n"


def render(drive: str, mount_path: str, exports: list[NfsExport]) -> str | None:
    """The drive's file of EXPORT blocks (None: no ganesha export)."""
    if not exports:
        return None
    return HEADER.format(drive=drive) + "".join(export_block(drive, mount_path, e) for e in exports)


ID_RE = re.compile(r"^\s*Export_Id\s*=\s*(\d+)\s*;", re.MULTILINE)
PATH_RE = re.compile(r'^\s*Path\s*=\s*"((?:[^"\\]|\\.)*)"\s*;', re.MULTILINE)


def ids_in(text: str | None) -> dict[int, str]:
    """The export ids of a file bsud wrote → their paths."""
    if not text:
        return {}
    ids = [int(m) for m in ID_RE.findall(text)]
    paths = [p.replace('\\"', '"').replace("\\\\", "\\") for p in PATH_RE.findall(text)]
    return dict(zip(ids, paths))
