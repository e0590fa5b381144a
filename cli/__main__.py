"""`python -m meshd.cli` runs the meshd command."""

from .app import main

main()
