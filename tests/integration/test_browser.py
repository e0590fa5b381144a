"""A real headless Chromium opens the chat page: the page warms the model before anyone asks,
the model is warm when the question is typed, and the answer streams into the page."""

from __future__ import annotations

import contextlib
import functools
import http.server
import os
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, ClassVar

import pytest
from conftest import NodeThread

from meshd.types import ModelState

CHROMIUM = os.environ.get("MESHD_TEST_CHROMIUM") or shutil.which("chromium") or ""
playwright = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
pytestmark = pytest.mark.skipif(
    not CHROMIUM,
    reason="no Chromium: scripts/test.sh installs Debian's `chromium` where apt-get works as "
    "root; elsewhere set MESHD_TEST_CHROMIUM=/path/to/chromium",
)


@contextlib.contextmanager
def chromium_page() -> Iterator[Any]:
    """A page in a fresh headless Chromium, closed with it."""
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            yield browser.new_page()
        finally:
            browser.close()


def wait_for_status(page: Any, start: str, timeout_ms: int = 60_000) -> None:
    """Until the chat page's status line starts with `start` ('ready', 'first token')."""
    page.wait_for_function(
        f"document.getElementById('status').textContent.startsWith({start!r})",
        timeout=timeout_ms,
    )


def ask(page: Any, question: str, timeout_ms: int = 60_000) -> str:
    """Type a question into the chat page and return the answer once it streams."""
    page.fill("#prompt", question)
    page.click("button[type=submit]")
    wait_for_status(page, "first token", timeout_ms)
    return str(page.inner_text("#answer"))


def test_the_page_warms_when_the_person_starts_and_streams_the_answer(
    start_node: Callable[..., NodeThread], tmp_path: Path
) -> None:
    node = start_node()
    assert node.node is not None and node.node.http is not None
    host = node.engine.hosts["tiny"]
    assert host.state is ModelState.COLD
    with chromium_page() as page:
        page.goto(f"{node.node.http.url}/?model=tiny")
        wait_for_status(page, "ready")
        # Opening the page warms nothing: another site can open it, only the person in
        # front of it starts a question.
        time.sleep(0.5)
        assert host.state is ModelState.COLD and host.last_used == 0
        page.click("#prompt")  # the person starts their question
        deadline = time.monotonic() + 60
        while host.state is not ModelState.WARM and time.monotonic() < deadline:
            time.sleep(0.02)
        assert host.state is ModelState.WARM, "the page warmed the model as they started"
        assert node.engine.telemetry.starts.labels("tiny", "cold")._value.get() == 0, (
            "no question has been asked yet"
        )
        answer = ask(page, "Once upon a time")
        status = page.inner_text("#status")
        page.screenshot(path=str(tmp_path / "chat-page.png"))
    assert answer.strip(), "the answer streamed into the page"
    assert f"served by {node.node.peer_id}" in status
    assert node.engine.telemetry.starts.labels("tiny", "warm")._value.get() == 1, (
        "the question found the model warm"
    )
    assert (tmp_path / "chat-page.png").stat().st_size > 1000


def test_a_page_warms_its_system_prompt_and_the_first_question_finds_it_cached(
    start_node: Callable[..., NodeThread],
) -> None:
    import json
    import urllib.request

    system = "You are the help desk of the Hello bakery. Answer kindly. " * 3
    node = start_node(slots=2)
    assert node.node is not None and node.node.http is not None
    host = node.engine.hosts["tiny"]
    with chromium_page() as page:
        page.goto(f"{node.node.http.url}/?model=tiny")
        page.evaluate("system => window.meshdWarm('tiny', {system: system})", system)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not any(
            system in c.text and c.held_until > time.time() for c in host.free.caches
        ):
            time.sleep(0.02)
    assert any(system in c.text for c in host.free.caches), "the page warmed its system prompt"
    body = {
        "model": "tiny",
        "messages": [{"role": "system", "content": system}, {"role": "user", "content": "Hi"}],
        "max_tokens": 2,
    }
    request = urllib.request.Request(
        f"{node.node.http.url}/v1/chat/completions",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=30) as reply:
        usage = json.load(reply)["usage"]
    assert usage["prompt_tokens_details"]["cached_tokens"] > 100


OPENAI_JS = Path(
    os.environ.get("MESHD_TEST_OPENAI_JS")
    or Path.home() / ".cache" / "meshd" / "npm" / "node_modules" / "openai"
)
SDK_PAGE = """<!doctype html><meta charset="utf-8"><title>an app on another origin</title>
<script type="module">
import OpenAI from "/openai/index.mjs";
const llm = new OpenAI({baseURL: "%(base)s/v1", apiKey: "unused-on-loopback",
                        dangerouslyAllowBrowser: true, maxRetries: 0});
try {
  const chat = await llm.chat.completions.create({
    model: "tiny", messages: [{role: "user", content: "Hello"}], max_tokens: 4});
  const stream = await llm.chat.completions.create({
    model: "tiny", messages: [{role: "user", content: "Hi"}], max_tokens: 5, stream: true,
    stream_options: {include_usage: true}});
  let streamed = "", usage = null;
  for await (const chunk of stream) {
    streamed += chunk.choices[0]?.delta?.content ?? "";
    usage = chunk.usage ?? usage;
  }
  const models = await llm.models.list();
  window.result = {chat: chat.choices[0].message.content, usage: chat.usage, streamed,
                   streamedUsage: usage, models: models.data.map(m => m.id)};
} catch (error) {
  window.result = {error: String(error)};
}
</script>"""


class _StaticFiles(http.server.SimpleHTTPRequestHandler):
    extensions_map: ClassVar[dict[str, str]] = {
        **http.server.SimpleHTTPRequestHandler.extensions_map,
        ".mjs": "text/javascript",
        ".js": "text/javascript",
    }

    def log_message(self, format: str, *args: object) -> None:
        pass


@contextlib.contextmanager
def site_on(folder: Path, host: str) -> Iterator[str]:
    """The files of folder served over HTTP on host (a loopback address): a web site of its
    own origin, as its base URL."""
    handler = functools.partial(_StaticFiles, directory=str(folder))
    server = http.server.ThreadingHTTPServer((host, 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://{host}:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.skipif(
    not (OPENAI_JS / "index.mjs").exists(),
    reason=f"the openai JS SDK is not at {OPENAI_JS}: scripts/test.sh installs it with npm "
    "where npm is installed; elsewhere set MESHD_TEST_OPENAI_JS=/path/to/node_modules/openai",
)
def test_the_official_js_sdk_works_from_a_page_of_another_origin(
    start_node: Callable[..., NodeThread], tmp_path: Path
) -> None:
    """A web app served from its own origin uses the daemon with the openai package: its
    preflights (x-stainless-* headers) pass, and chat, streaming and the model list work."""
    node = start_node()
    assert node.node is not None and node.node.http is not None
    site = tmp_path / "site"
    site.mkdir()
    (site / "openai").symlink_to(OPENAI_JS)
    (site / "index.html").write_text(SDK_PAGE % {"base": node.node.http.url})
    with site_on(site, "127.0.0.1") as app, chromium_page() as page:
        page.goto(f"{app}/index.html")
        page.wait_for_function("window.result !== undefined", timeout=60_000)
        result = page.evaluate("window.result")
    assert "error" not in result, result.get("error", "")
    assert result["usage"]["completion_tokens"] == 4 and result["chat"]
    assert result["streamedUsage"]["completion_tokens"] == 5 and result["streamed"]
    assert result["models"] == ["tiny"]


HOSTILE_PAGE = """<!doctype html><meta charset="utf-8"><title>any site</title>
<script>
// Listening before the iframe exists: its answer may come before the page has loaded.
window.addEventListener("message", (e) => { window.result = e.data; });
</script>
<iframe sandbox="allow-scripts allow-forms" srcdoc='<script>
  const base = "%(base)s";
  const tries = [
    fetch(base + "/v1/models").then(r => r.text()),
    fetch(base + "/metrics").then(r => r.text()),
    fetch(base + "/v1/completions", {method: "POST", headers: {"content-type": "text/plain"},
      body: JSON.stringify({model: "tiny", prompt: "leak", max_tokens: 3})}).then(r => r.text()),
    fetch(base + "/v1/warm", {method: "POST", headers: {"content-type": "text/plain"},
      body: JSON.stringify({model: "tiny", lease_seconds: 604800})}).then(r => r.text()),
  ];
  Promise.allSettled(tries).then(all => parent.postMessage(
    all.map(t => t.status === "fulfilled" ? "read: " + t.value.slice(0, 80) : "refused"), "*"));
</script>'></iframe>
<form id="f" method="POST" enctype="text/plain" target="sink" referrerpolicy="no-referrer"
      action="%(base)s/v1/completions">
  <input name='{"model": "tiny", "max_tokens": 3, "prompt": "x", "pad": "' value='"}'>
</form>
<form id="w" method="POST" enctype="text/plain" target="sink2" referrerpolicy="no-referrer"
      action="%(base)s/v1/warm">
  <input name='{"model": "tiny", "lease_seconds": 604800, "pad": "' value='"}'>
</form>
<iframe name="sink"></iframe><iframe name="sink2"></iframe>
<iframe id="framed" src="%(base)s/?model=tiny"></iframe>
<script>
document.getElementById("f").submit();
document.getElementById("w").submit();
</script>"""


def test_no_page_of_another_site_gets_anything(
    start_node: Callable[..., NodeThread], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A sandboxed iframe (Origin: null), a no-referrer form and a framed chat page, from a
    site on another origin: nothing is read, generated, warmed or framed."""
    import logging

    caplog.set_level(logging.INFO, logger="meshd.http.access")
    node = start_node()
    assert node.node is not None and node.node.http is not None
    host = node.engine.hosts["tiny"]
    site = tmp_path / "evil"
    site.mkdir()
    (site / "index.html").write_text(HOSTILE_PAGE % {"base": node.node.http.url})

    def answered() -> list[str]:
        return [r.getMessage() for r in caplog.records if r.name == "meshd.http.access"]

    # 127.0.0.2 is not an allowed origin: any site on the web, as the door sees it.
    with site_on(site, "127.0.0.2") as evil, chromium_page() as page:
        page.goto(f"{evil}/index.html")
        page.wait_for_function("window.result !== undefined", timeout=60_000)
        result = page.evaluate("window.result")
        deadline = time.monotonic() + 60  # the two forms and the framed page
        while time.monotonic() < deadline and len(answered()) < 7:
            time.sleep(0.05)
        framed = page.frame_locator("#framed").locator("#status").count()
    assert result == ["refused"] * 4, result
    assert framed == 0, "the chat page refuses to be framed by another site"
    lines = answered()
    assert len(lines) >= 7, lines
    forms = [line for line in lines if line.startswith("POST /v1/")]
    assert forms and all(" 403 " in line for line in forms), forms
    assert host.state is ModelState.COLD and host.last_used == 0 and host.lease_until == 0


def test_the_chat_page_chats_with_the_demo_model(
    start_node: Callable[..., NodeThread], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The demo model (no template in its file) chats on the page through Gemma's turns."""
    import logging

    from meshd.demo_model import DEMO_MODEL_NAME, demo_model_path

    caplog.set_level(logging.INFO, logger="meshd.http.access")
    path = demo_model_path(tmp_path / "demo")
    node = start_node(models={DEMO_MODEL_NAME: path}, context=1024)
    assert node.node is not None and node.node.http is not None
    with chromium_page() as page:
        page.goto(f"{node.node.http.url}/?model={DEMO_MODEL_NAME}")
        wait_for_status(page, "ready")
        answer = ask(page, "Name three colours.", timeout_ms=120_000)
    assert answer.strip(), "the answer streamed into the page"
    asked = [r.getMessage() for r in caplog.records if r.name == "meshd.http.access"]
    assert any(
        line.startswith(f"POST /v1/chat/completions 200 model={DEMO_MODEL_NAME}") for line in asked
    ), asked
    template = node.engine.hosts[DEMO_MODEL_NAME].chat_template
    assert template is not None and template.source == "gemma (built in)"
