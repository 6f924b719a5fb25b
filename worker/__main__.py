"""``python -m worker`` is the ``newsmon`` command."""

from worker.cli import main

main()
