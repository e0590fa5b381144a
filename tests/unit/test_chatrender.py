"""meshd/runner/chatrender.py: a chat template, untrusted code from a model file, rendered
within time and size bounds."""

from __future__ import annotations

import threading
import time

import pytest

from meshd.chattemplates import BUILT_IN
from meshd.errors import InvalidRequest
from meshd.runner.chatrender import MAX_RENDERED_CHARS, ChatTemplate, TemplateLimit

HI = [{"role": "user", "content": "Hi"}]


def test_a_template_renders_as_jinja_with_the_chat_variables() -> None:
    rendered = ChatTemplate(BUILT_IN["gemma"], "<bos>", "<eos>").render(HI)
    assert rendered == "<bos><start_of_turn>user\nHi<end_of_turn>\n<start_of_turn>model\n"
    echo = ChatTemplate("{{ messages | tojson }}{{ strftime_now('%Y') | length }}", "", "")
    assert echo.render(HI) == '[{"role": "user", "content": "Hi"}]4'


@pytest.mark.parametrize(
    "source",
    [
        "{{ 'x' * 1000000000 }}",
        "{{ 1000000000 * 'x' }}",
        "{{ messages * 100000000 }}",
        "{{ 2 ** 100000000 }}",
        "{{ '%1000000000d' % 1 }}",
        "{{ '{:>1000000000}'.format(1) }}",
    ],
)
def test_a_value_too_large_is_refused_before_it_is_made(source: str) -> None:
    started = time.monotonic()
    with pytest.raises(InvalidRequest, match="too large"):
        ChatTemplate(source, "", "").render(HI)
    assert time.monotonic() - started < 30  # refused, not built (a hang would never end)


def test_output_past_the_cap_stops_the_render() -> None:
    chat = [{"role": "user", "content": "x" * 1000}]
    source = "{% for i in range(100000) %}{{ messages[0].content }}{% endfor %}"
    with pytest.raises(TemplateLimit, match=f"over {MAX_RENDERED_CHARS:,} characters"):
        ChatTemplate(source, "", "").render(chat)


LOOP = "{% for a in range(100000) %}{% for b in range(100000) %}{% endfor %}{% endfor %}"


def test_a_template_that_loops_stops_at_its_deadline() -> None:
    with pytest.raises(TemplateLimit, match="ran past"):
        ChatTemplate(LOOP, "", "").render(HI, seconds=0.2)


def test_a_cancelled_render_stops() -> None:
    cancel = threading.Event()
    threading.Timer(0.2, cancel.set).start()
    with pytest.raises(TemplateLimit, match="cancelled"):
        ChatTemplate(LOOP, "", "").render(HI, cancel.is_set, seconds=3600)


def test_a_template_that_refuses_says_why_and_a_broken_one_is_refused() -> None:
    refusing = "{{ raise_exception('roles must alternate') }}"
    with pytest.raises(InvalidRequest, match="roles must alternate"):
        ChatTemplate(refusing, "", "").render(HI)
    with pytest.raises(InvalidRequest, match="does not compile"):
        ChatTemplate("{% for %}", "", "")
    with pytest.raises(InvalidRequest, match="refused"):  # the sandbox holds
        ChatTemplate("{{ ''.__class__.__mro__[1].__subclasses__() }}", "", "").render(HI)
