"""The HTTP door with real clients: the official OpenAI SDK (sync, async, streaming), curl -N
for the SSE framing, raw HTTP for every error, against real daemons."""

from __future__ import annotations

import asyncio
import http.client
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import openai
import pytest
from conftest import NodeThread
from helpers import eventually, meshd
from meshes import founder, joined

from meshd.client import MeshClient
from meshd.process import DaemonProcess
from meshd.types import ModelState


def url_of(node: NodeThread) -> str:
    assert node.node is not None and node.node.http is not None
    return node.node.http.url


def call(
    base: str, method: str, path: str, body: bytes | str | None = None, **headers: str
) -> tuple[int, dict[str, str], bytes]:
    """One raw HTTP request: status, headers (lower-case), body."""
    parts = urlsplit(base)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    try:
        data = body.encode() if isinstance(body, str) else body
        conn.request(
            method, path, body=data, headers={k.replace("_", "-"): v for k, v in headers.items()}
        )
        response = conn.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        conn.close()


def post(base: str, path: str, payload: Any, **headers: str) -> tuple[int, dict[str, str], Any]:
    status, got, body = call(
        base, "POST", path, json.dumps(payload), content_type="application/json", **headers
    )
    return status, got, json.loads(body) if body else None


@pytest.fixture
def node(start_node: Callable[..., NodeThread]) -> NodeThread:
    return start_node()


def test_the_openai_sdk_works_unchanged(node: NodeThread) -> None:
    sdk = openai.OpenAI(base_url=f"{url_of(node)}/v1", api_key="unused-on-loopback")
    chat = sdk.chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": "Hello"}], max_tokens=5, seed=1
    )
    assert chat.object == "chat.completion" and chat.choices[0].finish_reason == "length"
    assert chat.usage is not None and chat.usage.completion_tokens == 5
    assert chat.choices[0].message.role == "assistant" and chat.choices[0].message.content
    text = sdk.completions.create(model="tiny", prompt="Hello", max_tokens=4)
    assert text.object == "text_completion" and text.usage and text.usage.completion_tokens == 4
    stream = sdk.chat.completions.create(
        model="tiny",
        messages=[{"role": "user", "content": "Hi"}],
        max_tokens=6,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[-2].choices[0].finish_reason == "length"
    assert chunks[-1].choices == [] and chunks[-1].usage and chunks[-1].usage.completion_tokens == 6
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert [m.id for m in sdk.models.list()] == ["tiny"]

    async def asynchronous() -> int:
        client = openai.AsyncOpenAI(base_url=f"{url_of(node)}/v1", api_key="x")
        answer = await client.completions.create(model="tiny", prompt="Hi", max_tokens=3)
        stream = await client.completions.create(
            model="tiny", prompt="Hi", max_tokens=3, stream=True
        )
        pieces = [c async for c in stream]
        await client.close()
        assert pieces[-1].choices[0].finish_reason == "length"
        return answer.usage.completion_tokens if answer.usage else 0

    assert asyncio.run(asynchronous()) == 3


def test_sse_framing_with_curl(node: NodeThread) -> None:
    curl = shutil.which("curl")
    if curl is None:
        pytest.skip("curl is not installed")
    body = json.dumps({"model": "tiny", "prompt": "Hi", "max_tokens": 8, "stream": True})
    out = subprocess.run(
        [
            curl,
            "-sN",
            "-D",
            "-",
            "-H",
            "content-type: application/json",
            "-d",
            body,
            f"{url_of(node)}/v1/completions",
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    ).stdout
    head, _, events = out.partition("\n\n")  # (text mode: CRLF reads as LF)
    assert events, out
    assert "text/event-stream" in head and "x-meshd-served-by: peer-" in head
    assert events.endswith("data: [DONE]\n\n")
    frames = events.split("\n\n")[:-1]
    assert all(f.startswith("data: ") for f in frames)
    decoded = [json.loads(f[6:]) for f in frames[:-1]]
    assert decoded[-1]["choices"][0]["finish_reason"] == "length"
    assert decoded[-1]["meshd"]["served_by"].startswith("peer-")
    assert sum(len(d["choices"][0]["text"]) for d in decoded) > 0


@pytest.mark.parametrize(
    ("payload", "status", "param"),
    [
        ({"model": "nope", "prompt": "x"}, 404, None),
        ({"model": "tiny", "prompt": "x", "temperature": "hot"}, 400, "temperature"),
        ({"model": "tiny", "prompt": "x", "max_tokens": "5"}, 400, "max_tokens"),
        ({"model": "tiny", "prompt": "x", "max_tokens": 0}, 400, "max_tokens"),
        ({"model": "tiny", "prompt": "x", "n": 2}, 400, "n"),
        ({"model": "tiny", "prompt": 5}, 400, "prompt"),
        ({"prompt": "x"}, 400, "model"),
        ({"model": "tiny", "prompt": "x", "stop": 3}, 400, "stop"),
    ],
)
def test_errors_in_openai_shape(
    node: NodeThread, payload: dict[str, Any], status: int, param: str | None
) -> None:
    got, _, body = post(url_of(node), "/v1/completions", payload)
    assert got == status, body
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["param"] == param
    if status == 404:
        assert body["error"]["code"] == "model_not_found"


def test_bodies_that_are_not_requests(node: NodeThread) -> None:
    base = url_of(node)
    status, _, body = call(
        base, "POST", "/v1/chat/completions", "{not json", content_type="application/json"
    )
    assert status == 400 and b"not valid JSON" in body
    status, _, body = call(
        base, "POST", "/v1/chat/completions", "[1, 2]", content_type="application/json"
    )
    assert status == 400
    # A 2 MiB body: refused from its Content-Length, before the body is read. (The client
    # sends it all first, then reads: a client still sending when the refusal comes may find
    # its pipe closed, which is no answer to assert on.)
    parts = urlsplit(base)
    with socket.create_connection((parts.hostname, parts.port), timeout=10) as raw:
        head = (
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Content-Type: application/json\r\nContent-Length: 2097152\r\n\r\n"
        )
        raw.sendall(head + b"x" * 4096)
        answer = ""
        while "}}" not in answer and (piece := raw.recv(65536)):
            answer += piece.decode()
    assert answer.startswith("HTTP/1.1 413") and '"too_large"' in answer
    got, _, reply = post(base, "/v1/chat/completions", {"model": "tiny", "messages": "hi"})
    assert got == 400 and reply["error"]["param"] == "messages"
    assert MeshClient(node.address).health(), "the daemon lives on"


def test_overloaded_is_429_with_retry_after(start_node: Callable[..., NodeThread]) -> None:
    node = start_node(slots=1, max_queue=0)
    parts = urlsplit(url_of(node))
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    body = json.dumps({"model": "tiny", "prompt": "Hi", "max_tokens": 400, "stream": True})
    conn.request("POST", "/v1/completions", body, {"content-type": "application/json"})
    busy = conn.getresponse()
    assert busy.status == 200 and busy.readline().startswith(b"data: ")  # the slot is taken
    got, headers, reply = post(
        url_of(node), "/v1/completions", {"model": "tiny", "prompt": "x", "max_tokens": 2}
    )
    conn.close()
    assert got == 429 and headers["retry-after"] == "1"
    assert reply["error"]["type"] == "rate_limit_error"


def test_a_client_that_goes_away_frees_its_slot(node: NodeThread) -> None:
    parts = urlsplit(url_of(node))
    with MeshClient(node.address) as mesh:
        mesh.warm("tiny", wait=True)
        conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
        body = json.dumps(
            {"model": "tiny", "prompt": "Hi", "max_tokens": 480, "stream": True, "temperature": 0}
        )
        conn.request("POST", "/v1/completions", body, {"content-type": "application/json"})
        response = conn.getresponse()
        assert response.readline().startswith(b"data: ")
        assert mesh.status().load[0].active == 1
        conn.close()  # mid-stream
        freed = eventually(lambda: mesh.status().load[0].active == 0, timeout=60)
        started = time.monotonic()
        tokens_later = mesh.complete("tiny", "Hi", max_tokens=480, temperature=0)
        whole_answer = time.monotonic() - started
    assert tokens_later.tokens > 100
    # Freed at the next token, not at the end of the answer (both timed here, side by side).
    assert freed < whole_answer / 2, (freed, whole_answer)
    abandoned = 'meshd:requests_total{door="http",model="tiny",status="abandoned"} 1.0'
    eventually(lambda: abandoned in call(url_of(node), "GET", "/metrics")[2].decode())


def test_host_and_origin_checks(node: NodeThread) -> None:
    base = url_of(node)
    status, _, body = call(base, "GET", "/v1/models", Host="evil.example:7071")
    assert status == 403 and json.loads(body)["error"]["code"] == "host_not_allowed"
    assert call(base, "GET", "/v1/models", Host="localhost:7071")[0] == 200
    preflight = {"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"}
    status, headers, _ = call(base, "OPTIONS", "/v1/chat/completions", **preflight)
    assert status == 403 and "access-control-allow-origin" not in headers
    good = {
        **preflight,
        "Origin": "http://localhost:3000",
        "Access-Control-Request-Headers": "content-type",
    }
    status, headers, _ = call(base, "OPTIONS", "/v1/chat/completions", **good)
    assert status == 204 and headers["access-control-allow-origin"] == "http://localhost:3000"
    assert "POST" in headers["access-control-allow-methods"]
    status, headers, _ = call(base, "GET", "/v1/models", Origin="tauri://localhost")
    assert status == 200 and headers["access-control-allow-origin"] == "tauri://localhost"
    assert "x-meshd-served-by" in headers["access-control-expose-headers"]


def test_warm_accepts_json_beacons_and_forms(node: NodeThread) -> None:
    base = url_of(node)
    status, _, body = call(
        base,
        "POST",
        "/v1/warm",
        json.dumps({"model": "tiny"}),
        content_type="text/plain;charset=UTF-8",
    )  # navigator.sendBeacon
    assert status == 202 and json.loads(body)["model"] == "tiny"
    eventually(lambda: node.engine.hosts["tiny"].state is ModelState.WARM)
    status, _, body = call(
        base,
        "POST",
        "/v1/warm",
        "model=tiny&lease_seconds=600",
        content_type="application/x-www-form-urlencoded",
    )
    assert status == 202 and json.loads(body)["warm_until"] > time.time() + 500
    status, _, body = call(
        base,
        "POST",
        "/v1/warm",
        json.dumps({"model": "tiny", "lease_seconds": -1}),
        content_type="application/json",
    )
    assert status == 400 and json.loads(body)["error"]["param"] == "lease_seconds"


def test_metrics_count_what_happened(node: NodeThread) -> None:
    base = url_of(node)
    post(base, "/v1/completions", {"model": "tiny", "prompt": "Hi", "max_tokens": 3})
    post(base, "/v1/completions", {"model": "tiny", "prompt": "Hi", "max_tokens": 3})
    post(base, "/v1/completions", {"model": "nope", "prompt": "Hi"})
    status, headers, body = call(base, "GET", "/metrics")
    text = body.decode()
    assert status == 200 and headers["content-type"].startswith("text/plain")
    assert 'meshd:time_to_first_token_seconds_count{model="tiny"} 2.0' in text
    assert 'meshd:model_starts_total{model="tiny",start="cold"} 1.0' in text
    assert 'meshd:model_starts_total{model="tiny",start="warm"} 1.0' in text
    assert 'meshd:requests_total{door="http",model="tiny",status="ok"} 2.0' in text
    assert 'meshd:generation_tokens_total{model="tiny"} 6.0' in text
    assert 'meshd:models{state="warm"} 1.0' in text
    assert "meshd:request_queue_time_seconds_count" in text and "meshd:live_peers 0.0" in text


def test_api_keys_off_loopback(tmp_path: Path, start_peer: Callable[..., NodeThread]) -> None:
    a = founder(tmp_path, start_peer, http_listen="0.0.0.0:0")
    base = f"http://127.0.0.1:{urlsplit(url_of(a)).port}"  # loopback only: traffic stays here
    made = meshd("invite", "--client", "--name", "webapp", "--api-key", home=tmp_path / "a")
    key = made.stdout.strip()
    assert made.returncode == 0 and key.startswith("meshd_"), made.stderr
    assert key not in (tmp_path / "a" / "tls" / "issued.json").read_text(), "only its hash"
    status, _, body = call(base, "GET", "/v1/models")
    assert status == 401 and json.loads(body)["error"]["code"] == "invalid_api_key"
    assert call(base, "GET", "/v1/models", Authorization=f"Bearer {key}")[0] == 200
    assert call(base, "GET", "/meshd-warm.js")[0] == 200, "the script holds nothing"
    forged = key[:-4] + ("AAAA" if not key.endswith("AAAA") else "BBBB")
    assert call(base, "GET", "/v1/models", Authorization=f"Bearer {forged}")[0] == 401
    sdk = openai.OpenAI(base_url=f"{base}/v1", api_key=key)
    assert sdk.completions.create(model="tiny", prompt="Hi", max_tokens=2).usage
    # A friend's peer verifies the key offline, and learns of its revocation by heartbeat.
    b = joined(tmp_path, start_peer, a, "b", models={}, http_listen="0.0.0.0:0")
    friend = f"http://127.0.0.1:{urlsplit(url_of(b)).port}"
    assert call(friend, "GET", "/v1/models", Authorization=f"Bearer {key}")[0] == 200
    assert meshd("revoke", "webapp", home=tmp_path / "a").returncode == 0
    status, _, body = call(base, "GET", "/v1/models", Authorization=f"Bearer {key}")
    assert status == 401 and b"revoked" in body
    eventually(  # refused mesh-wide (how fast: bench/security.py)
        lambda: call(friend, "GET", "/v1/models", Authorization=f"Bearer {key}")[0] == 401,
        timeout=30,
    )
    for _ in range(10):
        call(base, "GET", "/v1/models", Authorization="Bearer meshd_wrong.key")
    assert call(base, "GET", "/v1/models", Authorization=f"Bearer {key}")[0] == 429


def test_a_friend_peer_answers_with_the_founders_warm_model(
    tmp_path: Path, start_peer: Callable[..., NodeThread]
) -> None:
    a = founder(tmp_path, start_peer)
    b = joined(tmp_path, start_peer, a, "b", models={})
    assert a.node is not None
    with MeshClient(f"unix:{a.node.socket}") as mesh:
        mesh.warm("tiny", wait=True)

    def sees_it_warm_on_a() -> bool:
        live = b.node.table.live(time.monotonic())  # type: ignore[union-attr]
        return any(m.state is ModelState.WARM for e in live if e.info for m in e.info.models)

    eventually(sees_it_warm_on_a)
    status, headers, body = post(
        url_of(b),
        "/v1/chat/completions",
        {"model": "tiny", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4},
    )
    assert status == 200, body
    assert headers["x-meshd-served-by"] == a.node.peer_id
    assert headers["x-meshd-routing-reason"].startswith(f"warm on {a.node.peer_id}")
    assert body["meshd"]["served_by"] == a.node.peer_id
    listing = json.loads(call(url_of(b), "GET", "/v1/models")[2])
    assert listing["data"][0]["warm_on"] == [a.node.peer_id]


def test_meshd_open_and_status_name_the_http_address(tmp_path: Path, tiny_model: Path) -> None:
    with DaemonProcess(tmp_path / "home", [f"tiny={tiny_model}"]) as daemon:
        opened = meshd("open", "--print", "--model", "tiny", home=daemon.home)
        assert opened.returncode == 0 and opened.stdout.strip() == f"{daemon.http}/?model=tiny"
        status = meshd("status", home=daemon.home)
        assert f"{daemon.http}/v1" in status.stdout
        assert json.loads(meshd("status", "--json", home=daemon.home).stdout)["http"] == daemon.http
    gone = meshd("open", "--print", home=tmp_path / "home")
    assert gone.returncode == 1 and "no meshd daemon" in gone.stderr


def test_a_failure_after_the_first_token_is_one_error_event(node: NodeThread) -> None:
    parts = urlsplit(url_of(node))
    with MeshClient(node.address) as mesh:
        mesh.warm("tiny", wait=True)
        pid = mesh.models()[0].runner_pid
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    body = json.dumps({"model": "tiny", "prompt": "Hi", "max_tokens": 480, "stream": True})
    conn.request("POST", "/v1/completions", body, {"content-type": "application/json"})
    response = conn.getresponse()
    assert response.readline().startswith(b"data: {")
    os.kill(pid, signal.SIGKILL)  # the model's runner dies mid-answer
    events = [line for line in response.read().split(b"\n") if line.startswith(b"data: ")]
    conn.close()
    last = json.loads(events[-1][6:])
    assert set(last) == {"error"} and last["error"]["code"] == "no_peer_available"
    assert "partial" in last["error"]["message"]
    assert b"data: [DONE]" not in events, "the stream just ends: no text is repeated"


BAD_REQUESTS = [
    ("POST", "/v1/chat/completions", "{not json", 400),
    ("POST", "/v1/completions", json.dumps({"model": "tiny", "prompt": "Hi", "n": 2}), 400),
    ("POST", "/v1/completions", json.dumps({"model": "tiny", "prompt": 7}), 400),
    ("POST", "/v1/completions", "[" * 100_000 + "]" * 100_000, 400),  # nested past any parser
    ("POST", "/v1/completions", json.dumps({"model": "nope", "prompt": "Hi"}), 404),
    ("POST", "/v1/warm", json.dumps({"model": 3}), 400),
    ("GET", "/v1/chat/completion", None, 404),  # a typo'd endpoint
    ("GET", "/v1/completions", None, 405),
    ("GET", "/v1/models/nope", None, 404),
]


def test_a_refused_request_costs_nothing_and_keeps_the_connection(
    node: NodeThread, caplog: pytest.LogCaptureFixture
) -> None:
    """Every 4xx is answered in OpenAI's shape, logs no traceback, and the same keep-alive
    connection then serves a good request."""
    parts = urlsplit(url_of(node))
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    good = json.dumps({"model": "tiny", "prompt": "Hi", "max_tokens": 2})
    headers = {"content-type": "application/json"}
    try:
        for method, path, body, status in BAD_REQUESTS:
            conn.request(method, path, body=body, headers=headers)
            response = conn.getresponse()
            reply = json.loads(response.read())
            assert response.status == status, (path, reply)
            assert set(reply["error"]) == {"message", "type", "param", "code"}
            sock = conn.sock
            conn.request("POST", "/v1/completions", body=good, headers=headers)
            answer = conn.getresponse()
            assert answer.status == 200 and json.loads(answer.read())["usage"]
            assert conn.sock is sock, f"the connection survived {method} {path}"
    finally:
        conn.close()
    tracebacks = [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]
    assert not tracebacks, [r.getMessage() for r in tracebacks]


def test_unknown_endpoints_say_what_is_served(node: NodeThread) -> None:
    status, _, body = call(url_of(node), "POST", "/v1/embeddings", "{}")
    error = json.loads(body)["error"]
    assert status == 404 and error["code"] == "not_found"
    assert "POST /v1/embeddings" in error["message"] and "/v1/chat/completions" in error["message"]


def test_one_model_by_id(node: NodeThread) -> None:
    status, _, body = call(url_of(node), "GET", "/v1/models/tiny")
    model = json.loads(body)
    assert status == 200 and model["id"] == "tiny" and model["object"] == "model"
    assert model["chat"] is True and model["chat_template"] == "gguf"  # its file has one
    status, _, body = call(url_of(node), "GET", "/v1/models/missing")
    assert status == 404 and json.loads(body)["error"]["code"] == "model_not_found"


def test_one_access_log_line_per_request_without_the_prompt(
    node: NodeThread, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="meshd.http.access")
    base = url_of(node)
    secret = "the-launch-code-is-0000"
    assert post(base, "/v1/completions", {"model": "tiny", "prompt": secret, "max_tokens": 2})[0]
    beacon = json.dumps({"model": "tiny"})
    assert call(base, "POST", "/v1/warm", beacon, content_type="text/plain")[0] == 202
    assert call(base, "GET", "/nowhere")[0] == 404

    def access_lines() -> list[str]:
        return [r.getMessage() for r in caplog.records if r.name == "meshd.http.access"]

    eventually(lambda: len(access_lines()) >= 3)  # written once the answer has gone out
    lines = access_lines()
    assert len(lines) == 3, lines
    served = node.node.peer_id if node.node is not None else "?"
    assert lines[0].startswith("POST /v1/completions 200 model=tiny served_by=" + served)
    assert lines[1].startswith("POST /v1/warm 202 model=tiny served_by=")
    assert lines[2].startswith("GET /nowhere 404 model=- served_by=-")
    assert all(line.endswith("ms") for line in lines)
    assert not any(secret in r.getMessage() for r in caplog.records)


def test_a_preflight_allows_the_headers_an_sdk_sends(node: NodeThread) -> None:
    asked = "authorization, content-type, x-stainless-lang, x-stainless-retry-count, bad header"
    status, headers, _ = call(
        url_of(node),
        "OPTIONS",
        "/v1/chat/completions",
        Origin="http://localhost:5173",
        Access_Control_Request_Method="POST",
        Access_Control_Request_Headers=asked,
    )
    allowed = {h.strip() for h in headers["access-control-allow-headers"].split(",")}
    assert status == 204 and {"x-stainless-lang", "x-stainless-retry-count"} <= allowed
    assert "bad header" not in allowed and headers["access-control-allow-origin"].endswith("5173")


def test_generation_takes_json_only_and_nothing_frames_the_door(node: NodeThread) -> None:
    """A page of another site can send text/plain or a form without a preflight, never JSON:
    generation refuses them (415); every answer forbids framing by another site."""
    base = url_of(node)
    body = json.dumps({"model": "tiny", "prompt": "Hi", "max_tokens": 2})
    for kind in ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data"):
        for path in ("/v1/completions", "/v1/chat/completions"):
            status, _, reply = call(base, "POST", path, body, content_type=kind)
            assert status == 415, (kind, path)
            assert json.loads(reply)["error"]["code"] == "unsupported_media_type"
    assert call(base, "POST", "/v1/completions", body, content_type="application/json")[0] == 200
    for path in ("/", "/v1/models", "/meshd-warm.js"):
        _, headers, _ = call(base, "GET", path)
        assert headers["x-frame-options"] == "SAMEORIGIN", path
        assert headers["content-security-policy"] == "frame-ancestors 'self'", path


def test_a_web_page_s_warm_is_short_and_a_pinned_one_is_null(
    start_node: Callable[..., NodeThread],
) -> None:
    node = start_node(pins=["tiny"])
    base = url_of(node)
    week = json.dumps({"model": "tiny", "lease_seconds": 7 * 86400})
    status, _, body = call(base, "POST", "/v1/warm", week, content_type="text/plain")
    assert status == 202 and json.loads(body)["warm_until"] is None  # pinned: for ever
    other = start_node(name="loose")
    base = url_of(other)
    before = time.time()
    status, _, body = call(
        base, "POST", "/v1/warm", week, content_type="text/plain", Origin="http://localhost:3000"
    )
    assert status == 202
    lease_until = other.engine.hosts["tiny"].lease_until
    assert before + 800 < lease_until <= time.time() + 900, "a page holds a model 15 min at most"
    status, _, body = call(base, "POST", "/v1/warm", week, content_type="application/json")
    assert status == 202 and other.engine.hosts["tiny"].lease_until > time.time() + 6 * 86400
    bad = json.dumps({"model": "tiny", "lease_seconds": -1})
    assert call(base, "POST", "/v1/warm", bad, content_type="application/json")[0] == 400


def test_silent_connections_do_not_shut_the_door(node: NodeThread) -> None:
    """300 connections that never send a request (or only part of one): a fresh request is
    answered at once, and the silent ones are closed within seconds."""
    from meshd.http.server import HEADER_TIMEOUT_S

    parts = urlsplit(url_of(node))
    silent = []
    try:
        for i in range(300):
            sock = socket.create_connection((parts.hostname, parts.port), timeout=30)
            if i % 2:
                sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n")  # dribbles
            silent.append(sock)
        body = {"model": "tiny", "prompt": "Hi", "max_tokens": 2}
        status, _, reply = post(url_of(node), "/v1/completions", body)
        assert status == 200 and reply["usage"]["completion_tokens"] == 2
        for sock in silent[-10:]:  # the newest: closed by the head deadline, not by eviction
            sock.settimeout(HEADER_TIMEOUT_S + 30)
            assert sock.recv(1) == b"", "the server closed a connection that sent no request"
    finally:
        for sock in silent:
            sock.close()
