"""The ``bsud`` subcommands that are more than a call into the daemon or the config (``bsud.cli`` parses and
dispatches)."""
