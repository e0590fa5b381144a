"""meshd/lanblock.py: the Local Network fix is said once, only where it can be the cause."""

from __future__ import annotations

import logging

import pytest

from meshd.lanblock import LanBlockHint

# What gRPC says when connect() fails with EHOSTUNREACH, as macOS's block makes it.
BLOCKED = (
    "failed to connect to all addresses; last error: UNKNOWN: ipv4:192.168.1.20:7070: "
    "Failed to connect to remote host: No route to host"
)
REFUSED = "failed to connect to all addresses; last error: Connection refused"


def test_an_agent_on_macos_is_told_the_fix_once(caplog: pytest.LogCaptureFixture) -> None:
    hint = LanBlockHint(platform="darwin", service="launch-agent")
    with caplog.at_level(logging.WARNING, logger="meshd.lanblock"):
        assert not hint.dial_failed(REFUSED), "a refused dial reached the host: no block"
        assert hint.dial_failed(BLOCKED)
        assert not hint.dial_failed(BLOCKED), "once per daemon"
    assert [r.getMessage() for r in caplog.records].count(caplog.records[0].getMessage()) == 1
    assert "--at-boot" in caplog.records[0].getMessage()


@pytest.mark.parametrize(
    ("platform", "service"),
    [("darwin", "launch-daemon"), ("darwin", ""), ("linux", "launch-agent"), ("linux", "")],
)
def test_nowhere_else(platform: str, service: str) -> None:
    assert not LanBlockHint(platform=platform, service=service).dial_failed(BLOCKED)


def test_where_the_service_says_what_it_is(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MESHD_SERVICE", "launch-agent")
    assert LanBlockHint(platform="darwin").applies
    monkeypatch.delenv("MESHD_SERVICE")
    assert not LanBlockHint(platform="darwin").applies
