"""What the commands share: their exit codes, how they speak to the user, and the running daemon's status."""

from __future__ import annotations

import json
import os
import sys

from bsud.config import Config
from bsud.logs import is_journal, journal_line

EXIT_OK, EXIT_ERROR, EXIT_CONFIG = 0, 1, 2
#: A reader that stopped reading (``bsud status | head -1``): quiet, as a program killed by SIGPIPE.
EXIT_PIPE = 128 + 13


def say(text: str, priority: int = 3) -> None:
    """One line for the user on stderr (with journald's priority prefix when stderr is the journal)."""
    print(journal_line(text, priority) if is_journal(sys.stderr) else text, file=sys.stderr)


def daemon_status(config: Config) -> dict | None:
    """The running daemon's status file, if its process is alive."""
    try:
        data = json.loads(open(config.daemon.status_file).read())
        os.kill(int(data["pid"]), 0)
        return data
    except (OSError, ValueError, KeyError, TypeError):
        return None
