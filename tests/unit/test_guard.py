"""meshd/rpc/guard.py: who may call what."""

from __future__ import annotations

import pytest

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
