"""``python -m conch``: the command line, as the ``conch`` script runs it."""

from conch.cli import main

main()
