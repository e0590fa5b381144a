"""meshd/rpc/guard.py: who may call what."""

from __future__ import annotations

import pytest

from meshd.logthrottle import Throttle, source_of
from meshd.rpc.guard import Caller, allowed


@pytest.mark.parametrize(
    ("kind", "method", "expected"),
    [
        ("local", "/meshd.v1.Admin/Revoke", True),
        ("peer", "/meshd.v1.Admin/Revoke", False),
        ("client", "/meshd.v1.Admin/CreateInvite", False),
        ("peer", "/meshd.v1.Mesh/FetchModel", True),
        ("peer", "/meshd.v1.Mesh/Heartbeat", True),
        ("client", "/meshd.v1.Mesh/FetchModel", False),
        ("client", "/meshd.v1.Mesh/Heartbeat", False),
        ("client", "/meshd.v1.Mesh/Generate", True),
        ("client", "/meshd.v1.Mesh/Warm", True),
        ("client", "/meshd.v1.Mesh/ListModels", True),
        ("client", "/grpc.health.v1.Health/Check", True),
        ("dev", "/meshd.v1.Mesh/Generate", True),
        ("dev", "/meshd.v1.Admin/Revoke", False),
        ("stranger", "/meshd.v1.Mesh/Generate", False),
    ],
)
def test_the_permission_table(kind: str, method: str, expected: bool) -> None:
    assert allowed(Caller(kind), method) is expected


def test_a_throttle_lets_one_line_a_minute_through_per_source() -> None:
    throttle = Throttle(every=60.0, max_sources=2)
    assert throttle.allow("a", now=0.0)
    assert not throttle.allow("a", now=59.0)
    assert throttle.allow("b", now=59.0)
    assert throttle.allow("a", now=60.0)
    assert throttle.suppressed == 1
    throttle.allow("c", now=61.0)  # "b" is the oldest now and is forgotten
    assert throttle.allow("b", now=62.0)
    assert source_of("ipv4:10.0.0.2:5123") == "ipv4:10.0.0.2"
    assert source_of("ipv6:[::1]:5123") == "ipv6:[::1]"
    assert source_of("unix:/tmp/x.sock") == "unix"
