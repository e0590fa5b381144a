"""Chat templates rendered within bounds: a model file (or meshd.toml) supplies the template, so
it is untrusted code. Jinja's sandbox keeps it from the runner's objects; this keeps it from
the runner's time and memory: a render that runs past its deadline, or is cancelled, stops; one
that would make a string or list past the output cap is refused before it is made."""

from __future__ import annotations

import datetime as dt
import json
import re
import sys
import threading
import time
from collections.abc import Callable, Sequence
from types import FrameType
from typing import Any

import jinja2
import jinja2.ext
from jinja2.exceptions import SecurityError
from jinja2.sandbox import ImmutableSandboxedEnvironment

from meshd.errors import InvalidRequest

RENDER_SECONDS = 5.0  # a real template renders in milliseconds
MAX_RENDERED_CHARS = 4 * 2**20  # far past any prompt a peer takes (max_prompt_bytes: 256 KiB)
_CHECK_EVERY = 256  # trace events between clock reads


class TemplateLimit(InvalidRequest):
    """A chat template ran past its time or size bound."""


class _Generation(jinja2.ext.Extension):
    """Hugging Face's `{% generation %}` tag, rendered as its contents."""

    tags = {"generation"}  # noqa: RUF012 - Jinja's own class attribute

    def parse(self, parser: Any) -> Any:
        parser.stream.skip(1)
        return parser.parse_statements(("name:endgeneration",), drop_needle=True)


class BoundedEnvironment(ImmutableSandboxedEnvironment):
    """A sandbox whose `*`, `**` and `+` cannot build a value past the output cap."""

    intercepted_binops = frozenset({"*", "**", "+", "%"})

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        if operator == "%" and isinstance(left, str):
            _check_widths(left)
        if operator == "**" and isinstance(right, int) and abs(right) > 64:
            raise SecurityError("a power too large for a chat template")
        if operator == "*":
            for seq, count in ((left, right), (right, left)):
                sized = isinstance(seq, str | list | tuple) and isinstance(count, int)
                if sized and len(seq) * count > MAX_RENDERED_CHARS:
                    raise SecurityError("a repetition too large for a chat template")
        sized = isinstance(left, str | list | tuple) and hasattr(right, "__len__")
        if operator == "+" and sized and len(left) + len(right) > MAX_RENDERED_CHARS:
            raise SecurityError("a value too large for a chat template")
        return super().call_binop(context, operator, left, right)

    def wrap_str_format(self, value: Any) -> Callable[..., str] | None:
        """str.format and format_map, sandboxed, with no field a million characters wide."""
        wrapped = super().wrap_str_format(value)
        if wrapped is None:
            return None
        _check_widths(value.__self__)
        return wrapped


_WIDE = re.compile(r"\d{7,}")  # a field width or precision of a million characters or more


def _check_widths(text: str) -> None:
    if _WIDE.search(text):
        raise SecurityError("a format width too large for a chat template")


def _tojson(value: Any, ensure_ascii: bool = False, indent: int | None = None, **_: Any) -> str:
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent)


def _raise(message: str) -> None:
    raise ValueError(message)


class ChatTemplate:
    """One model's template, compiled once; render() is bounded."""

    def __init__(self, source: str, bos_token: str, eos_token: str) -> None:
        env = BoundedEnvironment(
            loader=jinja2.BaseLoader(),
            trim_blocks=True,
            lstrip_blocks=True,
            extensions=[_Generation, jinja2.ext.loopcontrols],
        )
        env.filters["tojson"] = _tojson
        try:
            self.template = env.from_string(source)
        except jinja2.TemplateError as exc:
            raise InvalidRequest(f"the chat template does not compile: {exc}", "messages") from None
        self.bos_token, self.eos_token = bos_token, eos_token

    def render(
        self,
        messages: Sequence[dict[str, Any]],
        cancelled: Callable[[], bool] = lambda: False,
        seconds: float = RENDER_SECONDS,
    ) -> str:
        """The rendered prompt; TemplateLimit past `seconds` or MAX_RENDERED_CHARS (or once
        `cancelled()`), InvalidRequest when the template refuses the messages."""
        parts: list[str] = []
        size = 0
        with _deadline(time.monotonic() + seconds, cancelled):
            try:
                for piece in self.template.generate(
                    messages=list(messages),
                    bos_token=self.bos_token,
                    eos_token=self.eos_token,
                    add_generation_prompt=True,
                    raise_exception=_raise,
                    strftime_now=lambda f: dt.datetime.now().strftime(f),
                ):
                    size += len(piece)
                    if size > MAX_RENDERED_CHARS:
                        raise TemplateLimit(
                            f"the chat template rendered over {MAX_RENDERED_CHARS:,} characters",
                            "messages",
                        )
                    parts.append(piece)
            except TemplateLimit:
                raise
            except Exception as exc:  # the template may raise anything, raise_exception too
                raise InvalidRequest(
                    f"chat template refused the messages: {exc}", "messages"
                ) from None
        return "".join(parts)


class _Overdue(BaseException):
    """Raised inside the template's frames when its time is up (a BaseException, so that no
    `except Exception` in between can swallow it)."""


class _deadline:
    """Trace the current thread while a template renders: past the deadline, or once
    cancelled, the next traced line raises. Only this thread is traced, only meanwhile."""

    def __init__(self, deadline: float, cancelled: Callable[[], bool]) -> None:
        self.deadline, self.cancelled = deadline, cancelled
        self.events = 0
        self.overdue = ""

    def _check(self) -> None:
        self.events += 1
        if self.events % _CHECK_EVERY:
            return
        if time.monotonic() > self.deadline:
            self.overdue = f"the chat template ran past {RENDER_SECONDS:.0f} s"
        elif self.cancelled():
            self.overdue = "cancelled while the chat template rendered"
        if self.overdue:
            raise _Overdue

    def _trace(self, frame: FrameType, event: str, arg: Any) -> Any:
        self._check()
        return self._trace

    def __enter__(self) -> _deadline:
        self._previous = sys.gettrace()
        assert threading.current_thread() is not None
        sys.settrace(self._trace)
        return self

    def __exit__(self, kind: type[BaseException] | None, *_: object) -> None:
        sys.settrace(self._previous)
        if kind is _Overdue:
            raise TemplateLimit(self.overdue, "messages") from None
