"""The meshd command line (installed as meshd.cli)."""
