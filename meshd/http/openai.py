"""The OpenAI API's shapes, to the letter of its reference: request bodies in, responses,
stream chunks and errors out. Pure: no sockets, no router."""

from __future__ import annotations

import json
import math
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from meshd import errors
from meshd.types import ChatMessage, Chunk, FinishReason, GenerateRequest, Prefix, Sampling

DEFAULT_MAX_TOKENS = 256
ROLES = frozenset({"system", "user", "assistant", "developer", "tool"})


class HttpError(Exception):
    """An error answered in OpenAI's shape: {"error": {"message", "type", "param", "code"}}.

    A plain exception, not a frozen dataclass: whoever handles it (Python, Starlette, uvicorn)
    may set its traceback and context."""

    def __init__(
        self,
        status: int,
        message: str,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        retry_after: int | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.type = status, message, type
        self.param, self.code, self.retry_after = param, code, retry_after

    def body(self) -> dict[str, Any]:
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }


# meshd's errors as HTTP: status, OpenAI error type, code.
_HTTP_OF: dict[type[errors.MeshdError], tuple[int, str, str | None]] = {
    errors.InvalidRequest: (400, "invalid_request_error", None),
    errors.ModelNotFound: (404, "invalid_request_error", "model_not_found"),
    errors.RequestTooLarge: (413, "invalid_request_error", "request_too_large"),
    errors.Overloaded: (429, "rate_limit_error", "overloaded"),
    errors.InsufficientMemory: (503, "server_error", "insufficient_memory"),
    errors.ModelUnavailable: (503, "server_error", "model_unavailable"),
    errors.PeerUnavailable: (503, "server_error", "no_peer_available"),
    errors.DeadlineExceeded: (504, "server_error", "timeout"),
    errors.AccessDenied: (401, "authentication_error", "invalid_api_key"),
    errors.InternalError: (500, "server_error", None),
}
RETRY_AFTER_S = 1


def http_error(error: errors.MeshdError) -> HttpError:
    """The HttpError for a meshd error, by its nearest mapped class."""
    for cls in type(error).__mro__:
        if cls in _HTTP_OF:
            status, kind, code = _HTTP_OF[cls]
            param = error.field or None if isinstance(error, errors.InvalidRequest) else None
            retry = RETRY_AFTER_S if status == 429 else None
            return HttpError(status, str(error), kind, param, code, retry)
    return HttpError(500, str(error), "server_error")


def _invalid(param: str, message: str) -> HttpError:
    return HttpError(400, message, param=param, code="invalid_value")


@dataclass(frozen=True)
class Completion:
    """What a /v1/chat/completions or /v1/completions body asks for."""

    request: GenerateRequest
    stream: bool
    include_usage: bool
    chat: bool


def parse_body(raw: bytes) -> Mapping[str, Any]:
    """A JSON object, or a 400 naming what is wrong with it."""
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise HttpError(400, f"the body is not valid JSON: {exc}", code="invalid_json") from None
    except RecursionError:
        raise HttpError(400, "the body's JSON is nested too deeply", code="invalid_json") from None
    if not isinstance(body, dict):
        raise HttpError(400, "the body must be a JSON object", code="invalid_json")
    return body


def parse_completion(body: Mapping[str, Any], chat: bool) -> Completion:
    """A chat or text completion request; a 400 naming the first bad field."""
    model = _string(body, "model", required=True)
    if chat:
        messages = _messages(body.get("messages"))
        prompt = None
    else:
        messages, prompt = (), _prompt(body.get("prompt"))
    n = body.get("n", 1)
    if n not in (1, None):
        raise _invalid("n", "meshd answers one choice per request: n must be 1")
    stream = _boolean(body, "stream")
    options = body.get("stream_options") or {}
    if not isinstance(options, dict):
        raise _invalid("stream_options", "stream_options must be an object")
    include_usage = bool(options.get("include_usage", False))
    max_tokens = _integer(body, "max_completion_tokens") or _integer(body, "max_tokens")
    sampling = Sampling(
        temperature=_number(body, "temperature", 1.0),
        top_p=_number(body, "top_p", 1.0),
        seed=_integer(body, "seed"),
        stop=_stop(body.get("stop")),
    )
    request = GenerateRequest(
        model=model,
        prompt=prompt,
        messages=messages,
        max_tokens=DEFAULT_MAX_TOKENS if max_tokens is None else max_tokens,
        sampling=sampling,
    )
    return Completion(request, stream, include_usage, chat)


def _string(body: Mapping[str, Any], key: str, required: bool = False) -> str:
    value = body.get(key)
    if value is None and not required:
        return ""
    if not isinstance(value, str) or not value:
        raise _invalid(key, f"{key} must be a non-empty string")
    return value


def _boolean(body: Mapping[str, Any], key: str) -> bool:
    value = body.get(key, False)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise _invalid(key, f"{key} must be true or false")
    return value


def _integer(body: Mapping[str, Any], key: str) -> int | None:
    value = body.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise _invalid(key, f"{key} must be an integer")
    return value


def _number(body: Mapping[str, Any], key: str, default: float) -> float:
    value = body.get(key)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise _invalid(key, f"{key} must be a number")
    return float(value)


def _stop(value: object) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,)
    if isinstance(value, list) and all(isinstance(s, str) for s in value):
        return tuple(value)
    raise _invalid("stop", "stop must be a string or a list of strings")


def _prompt(value: object) -> str:
    if isinstance(value, list) and len(value) == 1:
        value = value[0]
    if not isinstance(value, str):
        raise _invalid("prompt", "prompt must be a string (one prompt per request)")
    return value


def _messages(value: object) -> tuple[ChatMessage, ...]:
    if not isinstance(value, list) or not value:
        raise _invalid("messages", "messages must be a non-empty list")
    out = []
    for i, message in enumerate(value):
        if not isinstance(message, dict) or message.get("role") not in ROLES:
            roles = ", ".join(sorted(ROLES))
            raise _invalid(f"messages[{i}].role", f"messages[{i}].role must be one of {roles}")
        role = "system" if message["role"] == "developer" else message["role"]
        out.append(ChatMessage(role, _content(message.get("content"), i)))
    return tuple(out)


def _content(value: object, i: int) -> str:
    """A message's text: a string, or the text parts of a list of content parts."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        texts = []
        for part in value:
            if not isinstance(part, dict) or part.get("type") != "text":
                raise _invalid(f"messages[{i}].content", "meshd takes text content parts only")
            if not isinstance(part.get("text"), str):
                raise _invalid(f"messages[{i}].content", "a text part needs a string text")
            texts.append(part["text"])
        return "".join(texts)
    raise _invalid(f"messages[{i}].content", f"messages[{i}].content must be a string")


# -- responses --------------------------------------------------------------------------------

FINISH = {FinishReason.EOS: "stop", FinishReason.STOP: "stop", FinishReason.LENGTH: "length"}


class Shaper:
    """The response objects of one completion: same id and creation time throughout."""

    def __init__(self, model: str, chat: bool) -> None:
        prefix = "chatcmpl" if chat else "cmpl"
        self.id = f"{prefix}-{secrets.token_hex(12)}"
        self.created = int(time.time())
        self.model, self.chat = model, chat

    def _base(self, obj: str) -> dict[str, Any]:
        return {"id": self.id, "object": obj, "created": self.created, "model": self.model}

    def chunk(self, text: str, finish: FinishReason | None, first: bool) -> dict[str, Any]:
        """One stream chunk."""
        reason = FINISH[finish] if finish is not None else None
        if self.chat:
            delta: dict[str, Any] = {"content": text} if text or not finish else {}
            if first:
                delta = {"role": "assistant", **delta}
            choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": reason}
            return {**self._base("chat.completion.chunk"), "choices": [choice]}
        choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": reason}
        return {**self._base("text_completion"), "choices": [choice]}

    def usage_chunk(self, last: Chunk) -> dict[str, Any]:
        """The stream's last chunk with stream_options.include_usage: no choices, the usage."""
        obj = "chat.completion.chunk" if self.chat else "text_completion"
        return {**self._base(obj), "choices": [], "usage": usage(last)}

    def whole(self, text: str, last: Chunk) -> dict[str, Any]:
        """A non-streamed response."""
        reason = FINISH[last.finish_reason] if last.finish_reason else "stop"
        if self.chat:
            message = {"role": "assistant", "content": text, "refusal": None}
            choice = {"index": 0, "message": message, "logprobs": None, "finish_reason": reason}
            obj = "chat.completion"
        else:
            choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": reason}
            obj = "text_completion"
        return {**self._base(obj), "choices": [choice], "usage": usage(last)}


def usage(last: Chunk) -> dict[str, Any]:
    """OpenAI's usage object; cached_tokens are prompt tokens the serving slot held warm."""
    return {
        "prompt_tokens": last.prompt_tokens,
        "completion_tokens": last.tokens,
        "total_tokens": last.prompt_tokens + last.tokens,
        "prompt_tokens_details": {"cached_tokens": last.cached_tokens},
    }


def parse_prefix(fields: Mapping[str, Any]) -> Prefix | None:
    """The prefix a /v1/warm body asks for: "prefix" (text) or "messages" (the first messages
    of later chats), or None."""
    text, messages = fields.get("prefix"), fields.get("messages")
    if text is not None and messages is not None:
        raise HttpError(400, "send prefix or messages, not both", param="prefix")
    if text is not None and not isinstance(text, str):
        raise HttpError(400, "prefix must be a string", param="prefix")
    prefix = Prefix(text or "", _messages(messages) if messages is not None else ())
    return prefix or None


def sse(data: Mapping[str, Any] | str) -> bytes:
    """One server-sent event."""
    text = data if isinstance(data, str) else json.dumps(data, separators=(",", ":"))
    return f"data: {text}\n\n".encode()
