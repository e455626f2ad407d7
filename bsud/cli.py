"""Command line: ``bsud [-c PATH] [--log-level L] [COMMAND]``.

Every failure the user can fix ends as one line per problem on stderr and a non-zero
exit code, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence

from bsud import __version__
from bsud.config import DEFAULT_CONFIG_PATH, Config, EnvSettings, InvalidConfig, load_config
from bsud.errors import BsudError
from bsud.logs import LEVELS, configure_logging, get_logger, register_secrets

EXIT_OK, EXIT_ERROR, EXIT_CONFIG = 0, 1, 2


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-c", "--config", metavar="PATH", default=argparse.SUPPRESS,
                        help=f"config file (default: {DEFAULT_CONFIG_PATH})")
    common.add_argument("--log-level", choices=LEVELS, default=argparse.SUPPRESS,
                        help="log level (default: $BSUD_LOG or info)")
    parser = argparse.ArgumentParser(
        prog="bsud",
        parents=[common],
        description="Keeps each configured drive — one filesystem made of several cloud block volumes — "
                    "online, offline or deleted as the config says, growing and shrinking it with its data.",
    )
    parser.add_argument("--version", action="version", version=f"bsud {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.add_parser("check-config", parents=[common],
                   help="validate the config and print it with defaults filled and secrets masked")
    return parser


def _load(path: str) -> Config:
    config = load_config(path)
    register_secrets(config.secrets())
    log = get_logger("bsud")
    for warning in config.warnings:
        log.warning(warning)
    return config


def cmd_check_config(config: Config) -> int:
    json.dump(config.effective(), sys.stdout, indent=2)
    sys.stdout.write("\n")
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    env = EnvSettings()
    level = getattr(args, "log_level", None) or env.bsud_log or "info"
    configure_logging(level)
    config_path = getattr(args, "config", None) or DEFAULT_CONFIG_PATH
    command = args.command or "check-config"
    try:
        config = _load(config_path)
        if command == "check-config":
            return cmd_check_config(config)
        parser.error(f"unknown command {command!r}")
    except InvalidConfig as exc:
        for problem in exc.problems:
            print(f"bsud: config error: {problem}", file=sys.stderr)
        return EXIT_CONFIG
    except BsudError as exc:
        print(f"bsud: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        return 130
    return EXIT_OK


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main(os.sys.argv[1:]))
