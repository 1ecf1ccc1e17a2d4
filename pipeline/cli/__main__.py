"""``python -m pipeline.cli ARGUMENTS``: the ``cloudpose`` command (torchrun starts it so)."""

from pipeline.cli.app import main

main()
