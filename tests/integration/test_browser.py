"""A real headless Chromium opens the chat page: the page warms the model before anyone asks,
the model is warm when the question is typed, and the answer streams into the page."""

from __future__ import annotations

import functools
import http.server
import os
import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import ClassVar

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


def test_the_page_warms_on_open_and_streams_the_answer(
    start_node: Callable[..., NodeThread], tmp_path: Path
) -> None:
    node = start_node()
    assert node.node is not None and node.node.http is not None
    host = node.engine.hosts["tiny"]
    assert host.state is ModelState.COLD
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            page = browser.new_page()
            page.goto(f"{node.node.http.url}/?model=tiny")
            # The warm request came with the page, before any question was typed.
            deadline = time.monotonic() + 60
            while host.state is not ModelState.WARM and time.monotonic() < deadline:
                time.sleep(0.02)
            assert host.state is ModelState.WARM, "the page warmed the model on open"
            assert (
                host.last_used > 0
                and node.engine.telemetry.starts.labels("tiny", "cold")._value.get() == 0
            ), "no question has been asked yet"
            page.fill("#prompt", "Once upon a time")
            page.click("button[type=submit]")
            page.wait_for_function(
                "document.getElementById('status').textContent.startsWith('first token')",
                timeout=60_000,
            )
            answer = page.inner_text("#answer")
            status = page.inner_text("#status")
            page.screenshot(path=str(tmp_path / "chat-page.png"))
        finally:
            browser.close()
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
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            page = browser.new_page()
            page.goto(f"{node.node.http.url}/?model=tiny")
            page.evaluate("system => window.meshdWarm('tiny', {system: system})", system)
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and not any(
                system in c.text and c.held_until > time.time() for c in host.free.caches
            ):
                time.sleep(0.02)
        finally:
            browser.close()
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
    handler = functools.partial(_StaticFiles, directory=str(site))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        with playwright.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
            try:
                page = browser.new_page()
                page.goto(f"http://127.0.0.1:{server.server_address[1]}/index.html")
                page.wait_for_function("window.result !== undefined", timeout=60_000)
                result = page.evaluate("window.result")
            finally:
                browser.close()
    finally:
        server.shutdown()
        server.server_close()
    assert "error" not in result, result.get("error", "")
    assert result["usage"]["completion_tokens"] == 4 and result["chat"]
    assert result["streamedUsage"]["completion_tokens"] == 5 and result["streamed"]
    assert result["models"] == ["tiny"]
