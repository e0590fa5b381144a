"""meshd/http/openai.py: OpenAI request bodies in, responses and errors out."""

from __future__ import annotations

import pytest

from meshd import errors
from meshd.http.openai import HttpError, Shaper, http_error, parse_body, parse_completion
from meshd.types import Chunk, FinishReason


def _text(text: str) -> dict[str, str]:
    return {"type": "text", "text": text}


def test_a_chat_body_becomes_a_request() -> None:
    asked = parse_completion(
        {
            "model": "m",
            "messages": [
                {"role": "developer", "content": "Be brief."},
                {
                    "role": "user",
                    "content": [{"type": "text", "text": "Hi "}, {"type": "text", "text": "there"}],
                },
            ],
            "max_completion_tokens": 7,
            "max_tokens": 99,
            "temperature": 0,
            "stop": "\n",
            "seed": 3,
            "stream": True,
            "stream_options": {"include_usage": True},
        },
        chat=True,
    )
    r = asked.request
    assert [(m.role, m.content) for m in r.messages] == [
        ("system", "Be brief."),
        ("user", "Hi there"),
    ]
    assert r.max_tokens == 7 and r.sampling.temperature == 0 and r.sampling.stop == ("\n",)
    assert r.sampling.seed == 3 and asked.stream and asked.include_usage


def test_defaults_follow_openai() -> None:
    r = parse_completion({"model": "m", "prompt": ["one prompt"]}, chat=False).request
    assert r.prompt == "one prompt" and r.sampling.temperature == 1.0 and r.sampling.top_p == 1.0


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"prompt": "x"}, "model"),
        ({"model": "m", "prompt": "x", "n": 3}, "n"),
        ({"model": "m", "prompt": "x", "temperature": True}, "temperature"),
        ({"model": "m", "prompt": "x", "temperature": float("nan")}, "temperature"),
        ({"model": "m", "prompt": "x", "seed": 1.5}, "seed"),
        ({"model": "m", "prompt": "x", "stream": "yes"}, "stream"),
        ({"model": "m", "prompt": ["a", "b"]}, "prompt"),
        ({"model": "m", "prompt": "x", "stop": [1]}, "stop"),
        ({"model": "m", "prompt": "x", "stream_options": 1}, "stream_options"),
    ],
)
def test_a_bad_field_is_named(body: dict, param: str) -> None:
    with pytest.raises(HttpError) as caught:
        parse_completion(body, chat=False)
    assert caught.value.status == 400 and caught.value.param == param


def test_bad_chat_messages_are_named() -> None:
    for messages, param in [
        ([], "messages"),
        ([{"role": "wizard", "content": "x"}], "messages[0].role"),
        ([{"role": "user", "content": [{"type": "image_url"}]}], "messages[0].content"),
        ([{"role": "user", "content": 5}], "messages[0].content"),
    ]:
        with pytest.raises(HttpError) as caught:
            parse_completion({"model": "m", "messages": messages}, chat=True)
        assert caught.value.param == param


def test_bodies_that_are_not_objects() -> None:
    for raw in (b"{", b"[]", b"\xff"):
        with pytest.raises(HttpError) as caught:
            parse_body(raw)
        assert caught.value.status == 400


def test_meshd_errors_map_to_openai_statuses() -> None:
    assert http_error(errors.ModelNotFound("x")).code == "model_not_found"
    assert http_error(errors.ModelNotFound("x")).status == 404
    overloaded = http_error(errors.Overloaded("busy"))
    assert overloaded.status == 429 and overloaded.retry_after == 1
    assert http_error(errors.InvalidRequest("bad", field="top_p")).param == "top_p"
    assert http_error(errors.RunnerFailed("died")).status == 503
    assert http_error(errors.AccessDenied("no")).status == 401
    assert http_error(errors.MeshdError("?")).status == 500


def test_stream_chunks_and_whole_answers_have_openai_shapes() -> None:
    shaper = Shaper("m", chat=True)
    first = shaper.chunk("Hel", None, first=True)
    assert first["object"] == "chat.completion.chunk" and first["id"].startswith("chatcmpl-")
    assert first["choices"][0]["delta"] == {"role": "assistant", "content": "Hel"}
    last = shaper.chunk("", FinishReason.EOS, first=False)
    assert last["choices"][0] == {
        "index": 0,
        "delta": {},
        "logprobs": None,
        "finish_reason": "stop",
    }
    end = Chunk("", 5, FinishReason.LENGTH, prompt_tokens=3, cached_tokens=2)
    assert shaper.usage_chunk(end)["choices"] == []
    assert shaper.usage_chunk(end)["usage"] == {
        "prompt_tokens": 3,
        "completion_tokens": 5,
        "total_tokens": 8,
        "prompt_tokens_details": {"cached_tokens": 2},
    }
    whole = Shaper("m", chat=False).whole("text", end)
    assert whole["object"] == "text_completion" and whole["choices"][0]["finish_reason"] == "length"
