"""cli/common.py: what every command shares."""

from __future__ import annotations

from pathlib import Path

import pytest
from meshd.cli import common

from meshd.config import load_settings
from meshd.errors import PeerUnavailable


def test_a_command_reads_its_settings_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    reads: list[Path | None] = []

    def counted(home: Path | None) -> object:
        reads.append(home)
        return load_settings(home, environ={})

    monkeypatch.setattr(common, "load_settings", counted)
    common.settings_of.cache_clear()
    home = tmp_path / "home"
    with pytest.raises(PeerUnavailable, match="no meshd daemon is running"):
        common.resolve_address(None, home)
    with pytest.raises(PeerUnavailable):
        common.local_socket(home)
    assert common.settings_of(home).home == home.resolve()
    assert reads == [home]
    common.settings_of.cache_clear()
