"""The `retl` console script. Signal handlers come first, before the CLI's imports, so that
Ctrl-C or SIGTERM at any moment gives one line and exit 130/143, never a traceback."""

from __future__ import annotations

import sys


def main() -> None:
    from reverse_etl import interrupt

    interrupt.install()
    try:
        from reverse_etl.cli import main as cli_main
    except interrupt.RunInterrupted as exc:
        sys.stderr.write(f"interrupted by {exc} while retl started: nothing was done\n")
        sys.exit(exc.exit_code)
    cli_main()
