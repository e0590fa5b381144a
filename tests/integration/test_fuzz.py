"""Random bytes and random field values into every gRPC method of a real daemon in a mesh:
every answer is a status meshd means (never UNKNOWN or INTERNAL), and the daemon lives on."""

from __future__ import annotations

import ipaddress
import math
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from conftest import NodeThread
from google.protobuf.message import DecodeError, Message
from hypothesis import HealthCheck, assume, given, settings, strategies as st
from meshes import founder, invite_code

from meshd import gossip
from meshd.rpc import channels
from meshd.security.invite import decode_invite
from meshd.security.keyring import Keyring
from meshd.v1 import access_pb2 as apb, mesh_pb2 as pb

NEVER = {grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL}
EXAMPLES = settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
DAEMON_METHODS = [
    (f"/meshd.v1.{m.containing_service.name}/{m.name}", m)
    for service in (
        pb.DESCRIPTOR.services_by_name["Mesh"],
        apb.DESCRIPTOR.services_by_name["Admin"],
    )
    for m in service.methods
]


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path) -> Iterator[NodeThread]:
    from conftest import node_settings

    root = tmp_path_factory.mktemp("fuzz")
    Keyring(root / "a").init_mesh("friends")
    node = NodeThread(
        node_settings(root / "a", {"tiny": tiny_model}, insecure_dev=False, max_tokens_cap=16)
    ).start()
    yield node
    node.stop()


def call(channel: grpc.Channel, method: str, streaming: bool, payload: bytes) -> grpc.StatusCode:
    """Send raw bytes; the status that came back."""
    kind = channel.unary_stream if streaming else channel.unary_unary
    stub = kind(method, request_serializer=None, response_deserializer=None)
    try:
        reply = stub(payload, timeout=20)
        if streaming:
            list(reply)
    except grpc.RpcError as exc:
        return exc.code()  # type: ignore[no-any-return]
    return grpc.StatusCode.OK


def dials_beyond_loopback(method: str, payload: bytes) -> bool:
    """Whether a Heartbeat would make the daemon dial (or resolve) a non-loopback address:
    tests send traffic only to loopback."""
    if not method.endswith("/Heartbeat"):
        return False
    try:
        address = pb.HeartbeatRequest.FromString(payload).sender.address
    except (DecodeError, UnicodeDecodeError):
        return False
    normal = gossip.peer_address(address)
    if normal is None:
        return False
    try:
        return not ipaddress.ip_address(gossip.host_of(normal)).is_loopback
    except ValueError:
        return True  # a host name: resolving it would ask a name server


def check_alive(channel: grpc.Channel, models: list[str]) -> None:
    listing = channels.mesh_stub(channel).ListModels(pb.ListModelsRequest(), timeout=10)
    assert [m.name for m in listing.models] == models


@pytest.mark.parametrize(
    ("method", "descriptor"), DAEMON_METHODS, ids=[m for m, _ in DAEMON_METHODS]
)
def test_random_bytes_into_every_method(daemon: NodeThread, method: str, descriptor: Any) -> None:
    assert daemon.node is not None
    channel = channels.open_channel(f"unix:{daemon.node.socket}")
    streaming = descriptor.server_streaming

    @EXAMPLES
    @given(st.binary(max_size=512))
    def fuzz(payload: bytes) -> None:
        assume(not dials_beyond_loopback(method, payload))
        assert call(channel, method, streaming, payload) not in NEVER

    fuzz()
    check_alive(channel, ["tiny"])


texts = st.one_of(st.text(max_size=80), st.sampled_from(["tiny", "", "x" * 5000, "../etc"]))
floats = st.one_of(st.floats(), st.sampled_from([math.nan, math.inf, -math.inf, 0.0, 1e308]))
ints = st.integers(min_value=0, max_value=2**32 - 1)
u64 = st.integers(min_value=0, max_value=2**64 - 1)
loopback = st.builds(lambda p: f"127.0.0.1:{p}", st.integers(1, 65535))

REQUESTS: dict[str, Callable[[], st.SearchStrategy[Message]]] = {
    "Generate": lambda: st.builds(
        pb.GenerateRequest,
        model=texts,
        prompt=texts,
        max_tokens=st.integers(-(2**31), 2**31 - 1),
        sampling=st.builds(
            pb.Sampling,
            temperature=floats,
            top_p=floats,
            top_k=st.integers(-(2**31), 2**31 - 1),
            seed=u64,
            stop=st.lists(texts, max_size=10),
        ),
        hops=ints,
    ),
    "Warm": lambda: st.builds(
        pb.WarmRequest,
        model=texts,
        lease_seconds=floats,
        wait=st.booleans(),
        replicas=ints,
        hops=ints,
    ),
    "FetchModel": lambda: st.one_of(
        st.builds(pb.FetchModelRequest, name=texts, offset=u64),
        st.builds(pb.FetchModelRequest, digest=texts, offset=u64),
    ),
    "Heartbeat": lambda: st.builds(
        pb.HeartbeatRequest,
        sender=st.builds(
            pb.PeerInfo,
            peer_id=texts,
            mesh_id=texts,
            address=st.one_of(loopback, st.just("unix:/tmp/x.sock"), st.just("")),
            known_addresses=st.lists(loopback, max_size=5),
        ),
        revocations=st.binary(max_size=300),
    ),
    "CreateInvite": lambda: st.builds(
        apb.CreateInviteRequest, ttl_seconds=floats, addresses=st.lists(texts, max_size=3)
    ),
    "Revoke": lambda: st.builds(apb.RevokeRequest, name=texts),
}


@pytest.mark.parametrize("name", sorted(REQUESTS))
def test_random_field_values(daemon: NodeThread, name: str) -> None:
    assert daemon.node is not None
    channel = channels.open_channel(f"unix:{daemon.node.socket}")
    method, descriptor = next((m, d) for m, d in DAEMON_METHODS if d.name == name)

    @EXAMPLES
    @given(REQUESTS[name]())
    def fuzz(request: Message) -> None:
        status = call(channel, method, descriptor.server_streaming, request.SerializeToString())
        assert status not in NEVER

    fuzz()
    check_alive(channel, ["tiny"])


def test_random_joins(tmp_path: Path, start_peer: Callable[..., NodeThread]) -> None:
    a = founder(tmp_path, start_peer, models={})
    code = decode_invite(invite_code(a, ttl=600))
    assert a.node is not None and a.node.trust.ca is not None
    from meshd.security import pki

    channel = channels.open_join_channel(code.addresses[0], pki.cert_pem(a.node.trust.ca))

    @EXAMPLES
    @given(
        st.one_of(
            st.binary(max_size=512),
            st.builds(
                lambda s, c: apb.JoinRequest(secret=s, csr=c).SerializeToString(),
                st.binary(max_size=64),
                st.binary(max_size=600),
            ),
        )
    )
    def fuzz(payload: bytes) -> None:
        assert call(channel, "/meshd.v1.Join/Join", False, payload) not in NEVER

    fuzz()
    check_alive(channels.open_channel(f"unix:{a.node.socket}"), [])
