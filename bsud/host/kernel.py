"""Kernel modules an export needs (nfsd, LIO, nvmet), loaded the way bsud's unit allows.

bsud's systemd unit keeps CAP_SYS_MODULE out of its bounding set: a daemon that mounts drives needs no power to load
code into the kernel. Where systemd runs, a module is loaded by systemd's own ``modprobe@<module>.service`` (outside
bsud's sandbox); elsewhere (a container, a test VM without systemd, bsud run by hand) with ``modprobe``.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterable
from pathlib import Path

from bsud.errors import BsudError
from bsud.runner import Runner

SYS_MODULE = Path("/sys/module")
#: The command :func:`load_modules` runs where systemd does not → its package (for the pre-flight of who loads).
TOOLS = {"modprobe": "kmod"}
#: Where configfs is mounted: the kernel targets' (LIO, nvmet) whole interface.
CONFIGFS = Path("/sys/kernel/config")


def systemd_running() -> bool:
    """systemd is PID 1 here (sd_booted(3)'s test) and systemctl is installed."""
    return shutil.which("systemctl") is not None and Path("/run/systemd/system").is_dir()


def builtin_modules(release: str | None = None) -> set[str]:
    """Modules built into the running kernel (they need no loading), by name with ``_``."""
    path = Path("/lib/modules") / (release or os.uname().release) / "modules.builtin"
    try:
        return {Path(line.strip()).name.removesuffix(".ko").replace("-", "_") for line in path.read_text().splitlines()}
    except OSError:
        return set()


def loaded(module: str) -> bool:
    name = module.replace("-", "_")
    return (SYS_MODULE / name).is_dir() or name in builtin_modules()


def load_modules(runner: Runner, modules: Iterable[str]) -> None:
    """Load each module not loaded yet; raise one line naming those that would not load."""
    missing = [m for m in modules if not loaded(m)]
    if not missing:
        return
    if systemd_running():
        # modprobe@.service ignores modprobe's failure (ExecStart=-…): what loaded is checked below.
        runner.run(["systemctl", "start", *(f"modprobe@{m}.service" for m in missing)], timeout=120)
    else:
        for module in missing:
            runner.run(["modprobe", module], timeout=60)
    still = [m for m in missing if not loaded(m)]
    if still:
        raise BsudError(f"kernel module{'s' * (len(still) > 1)} {', '.join(still)} would not load; check that the "
                        f"running kernel has {'them' if len(still) > 1 else 'it'} (modprobe {still[0]})",
                        temporary=True)
