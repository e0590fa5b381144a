"""meshd/rpc/channels.py: where the CLI socket lives, and the private folder it may need."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from meshd.errors import ConfigError
from meshd.rpc.channels import check_private_folder, socket_path


def test_a_short_home_keeps_its_socket(tmp_path: Path) -> None:
    assert socket_path(tmp_path) == tmp_path / "meshd.sock"


def test_a_long_home_gets_a_private_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", None)
    home = tmp_path / ("h" * 120)
    path = socket_path(home)
    assert path.parent == tmp_path / f"meshd-{os.getuid()}"
    assert oct(path.parent.stat().st_mode & 0o777) == "0o700"
    assert socket_path(home) == path, "the same home, the same socket"


def test_a_folder_someone_else_made_first_is_refused(tmp_path: Path) -> None:
    folder = tmp_path / "shared"
    folder.mkdir(mode=0o700)
    os.chmod(folder, 0o755)
    with pytest.raises(ConfigError, match="open to other users"):
        check_private_folder(folder)
    link = tmp_path / "link"
    link.symlink_to(folder)
    with pytest.raises(ConfigError, match="not a folder"):
        check_private_folder(link)
    if os.getuid() != 0:
        pytest.skip("making a folder another user owns needs root")
    os.chmod(folder, 0o700)
    os.chown(folder, 65534, 65534)
    with pytest.raises(ConfigError, match="belongs to another user"):
        check_private_folder(folder)
