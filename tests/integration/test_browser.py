"""A real headless Chromium opens the chat page: the page warms the model before anyone asks,
the model is warm when the question is typed, and the answer streams into the page."""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path

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
            deadline = time.monotonic() + 15
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
                timeout=15_000,
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
            deadline = time.monotonic() + 15
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
