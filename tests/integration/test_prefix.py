"""Prefix warming on real llama.cpp: a warmed prefix is reused by the requests that start with
it (same greedy text as without it), each slot keeps its own prefix, and short requests on
other slots leave a warmed prefix alone."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from conftest import NodeThread

from meshd.client import MeshClient
from meshd.errors import InvalidRequest
from meshd.types import WarmRequest

SYSTEM = "You are a careful assistant for the Hello team. " * 3
OTHER = "Translate every sentence the user sends into plain words. " * 3


def _ask(node: NodeThread, prompt: str, **kw: object) -> object:
    with MeshClient(node.address) as mesh:
        return mesh.complete("tiny", prompt, max_tokens=4, temperature=0.0, **kw)  # type: ignore[arg-type]


def test_a_warmed_prefix_is_reused_with_the_same_greedy_text(
    start_node: Callable[..., NodeThread],
) -> None:
    warmed = start_node(slots=2)
    cold = start_node(slots=2)
    with MeshClient(warmed.address) as mesh:
        result = mesh.warm("tiny", prefix=SYSTEM, wait=True)
    assert result.prefix_tokens > 50
    question = SYSTEM + "Hello there, how are you?"
    reused = _ask(warmed, question)
    fresh = _ask(cold, question)
    assert fresh.cached_tokens <= 1  # type: ignore[attr-defined]  # the BOS of the load
    assert reused.cached_tokens >= result.prefix_tokens - 2  # type: ignore[attr-defined]
    assert reused.cached_tokens < reused.prompt_tokens  # type: ignore[attr-defined]
    assert reused.text == fresh.text  # type: ignore[attr-defined]


def test_each_slot_keeps_its_prefix_and_short_requests_leave_them_alone(
    start_node: Callable[..., NodeThread],
) -> None:
    node = start_node(slots=3)
    with MeshClient(node.address) as mesh:
        first = mesh.warm("tiny", prefix=SYSTEM, wait=True)
        second = mesh.warm("tiny", prefix=OTHER, wait=True)
    assert first.prefix_tokens > 50 and second.prefix_tokens > 50
    for short in ("Hi", "Good morning", "Yes"):  # unrelated: they go to the third slot
        assert _ask(node, short).prompt_tokens < 20  # type: ignore[attr-defined]
        for prefix, warm in ((SYSTEM, first), (OTHER, second)):
            answer = _ask(node, prefix + "Hello?")
            assert answer.cached_tokens >= warm.prefix_tokens - 2  # type: ignore[attr-defined]


def test_a_chat_prefix_warms_the_system_message_as_the_template_renders_it(
    start_node: Callable[..., NodeThread],
) -> None:
    node = start_node(slots=1)
    system = {"role": "system", "content": SYSTEM}
    with MeshClient(node.address) as mesh:
        warm = mesh.warm("tiny", messages=[system], wait=True)
        answer = mesh.complete(
            "tiny",
            messages=[system, {"role": "user", "content": "Hello?"}],
            max_tokens=2,
            temperature=0.0,
        )
    assert warm.prefix_tokens > 50
    assert answer.cached_tokens >= warm.prefix_tokens - 2


def test_the_mesh_routes_a_request_to_the_peer_holding_its_prefix(
    start_node: Callable[..., NodeThread],
) -> None:
    import time

    from helpers import eventually
    from meshes import two_warm_peers

    from meshd.prefixes import BLOCK_CHARS
    from meshd.types import Prefix

    a, b = two_warm_peers(start_node, context=2048)
    assert a.node is not None and b.node is not None
    system = SYSTEM * 10  # five fingerprint blocks: a prefill that matters even on tiny
    assert len(system) > 5 * BLOCK_CHARS
    a.call(a.node.engine.warm(WarmRequest("tiny", 60, wait=True, prefix=Prefix(system))))

    def b_sees_a_prefix() -> bool:
        live = b.node.table.live(time.monotonic())  # type: ignore[union-attr]
        return any(e.info and e.info.models[0].prefix_prints for e in live)

    eventually(b_sees_a_prefix)
    with MeshClient(b.address) as mesh:
        answer = mesh.complete("tiny", system + "Hello?", max_tokens=2, temperature=0.0)
        short = mesh.complete("tiny", "Hello?", max_tokens=2, temperature=0.0)
    assert answer.served_by == a.node.peer_id
    assert answer.routing_reason.startswith(f"prefix warm on {a.node.peer_id}, ~")
    assert answer.cached_tokens > 100
    assert short.served_by == b.node.peer_id  # nothing warm elsewhere: this peer, as before


def test_meshd_warm_with_a_prefix_file(
    start_node: Callable[..., NodeThread], tmp_path: object
) -> None:
    from pathlib import Path

    from helpers import meshd

    node = start_node(slots=2)
    prefix = Path(str(tmp_path)) / "system.txt"
    prefix.write_text(SYSTEM)
    out = meshd("warm", "tiny", "--prefix-file", str(prefix), "--wait", home=node.settings.home)
    assert out.returncode == 0, out.stderr
    assert "prefix of" in out.stdout and "tokens warm in a slot" in out.stdout
    assert _ask(node, SYSTEM + "Hello?").cached_tokens > 100  # type: ignore[attr-defined]


def test_a_pinned_prefix_is_saved_then_restored_and_ignored_once_its_model_changes(
    start_node: Callable[..., NodeThread], tiny_model: object, tmp_path: object
) -> None:
    import shutil
    import time
    from pathlib import Path

    from helpers import eventually
    from tinygguf import write_tiny_gguf

    model = Path(str(tmp_path)) / "pinned.gguf"
    shutil.copyfile(str(tiny_model), model)
    pinned = {"team": {"model": "tiny", "text": SYSTEM}}

    def run() -> tuple[bool, str, int]:
        node = start_node(models={"tiny": model}, name="pinned", slots=2, prefixes=pinned)
        assert node.node is not None
        host = node.node.engine.hosts["tiny"]
        try:
            node.call(node.node.engine.warm(WarmRequest("tiny", wait=True)))
            eventually(lambda: "team" in host.pinned_prefixes)
            answer = _ask(node, SYSTEM + "Hello?")
            return (
                host.pinned_prefixes["team"].restored,
                answer.text,  # type: ignore[attr-defined]
                answer.cached_tokens,  # type: ignore[attr-defined]
            )
        finally:
            node.stop()

    first = run()
    saved = Path(str(tmp_path)) / "pinned" / "prefixes" / "team.state"
    assert not first[0] and saved.stat().st_size > 0 and first[2] > 100
    again = run()
    assert again[0], "restored from its saved state"
    assert again[1:] == first[1:], "the same greedy answer, the same cached tokens"
    time.sleep(0.01)
    write_tiny_gguf(model, seed=1)  # the model file changes: its saved prefix is another's
    changed = run()
    assert not changed[0] and changed[2] > 100


def test_a_pinned_prefix_for_a_model_this_peer_lacks_is_refused_at_start(
    tiny_model: object, tmp_path: object
) -> None:
    from pathlib import Path

    import pytest
    from conftest import NodeThread, node_settings

    from meshd.errors import ConfigError

    settings = node_settings(
        Path(str(tmp_path)) / "h",
        {"tiny": Path(str(tiny_model))},
        prefixes={"team": {"model": "tnyi", "text": SYSTEM}},
    )
    with pytest.raises(ConfigError, match=r"\[prefixes.team\] names model 'tnyi'.*has: tiny"):
        NodeThread(settings).start()


def test_a_prefix_longer_than_the_context_is_refused_to_the_caller(
    start_node: Callable[..., NodeThread],
) -> None:
    """A warm with a prefix that cannot fit a slot answers 400 now, not 202 and a log line."""
    import json
    import urllib.error
    import urllib.request

    node = start_node(context=256)
    assert node.node is not None and node.node.http is not None
    with MeshClient(node.address) as mesh:
        mesh.warm("tiny", wait=True)
        with pytest.raises(InvalidRequest, match=r"the prefix is [\d,]+ tokens; a slot .* 256"):
            mesh.warm("tiny", prefix="Once upon a time, " * 200)
        assert mesh.warm("tiny", prefix="Once upon a time, ").model == "tiny"  # one that fits
    body = json.dumps({"model": "tiny", "messages": [{"role": "system", "content": "x " * 900}]})
    request = urllib.request.Request(
        f"{node.node.http.url}/v1/warm", data=body.encode(), headers={"content-type": "text/plain"}
    )
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=30)
    assert refused.value.code == 400
    assert json.loads(refused.value.read())["error"]["param"] == "prefix"
