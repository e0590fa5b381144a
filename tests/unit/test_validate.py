"""meshd/engine/validate.py: request checks done before a request takes a place in a queue."""

from __future__ import annotations

import math

import pytest

from meshd import errors
from meshd.engine.validate import Limits, validate_request
from meshd.types import GenerateRequest, Sampling


class TestValidate:
    limits = Limits(max_tokens=1000, max_prompt_bytes=50)

    def test_a_good_request_passes(self) -> None:
        validate_request(GenerateRequest("m", "hi", max_tokens=1000), self.limits)

    @pytest.mark.parametrize(
        ("request_", "field"),
        [
            (GenerateRequest("m", "", max_tokens=5), "prompt"),
            (GenerateRequest("m", "x" * 51, max_tokens=5), "prompt"),
            (GenerateRequest("m", "hi", max_tokens=1001), "max_tokens"),
            (GenerateRequest("m", "hi", sampling=Sampling(temperature=math.nan)), "temperature"),
            (GenerateRequest("m", "hi", sampling=Sampling(top_p=1.5)), "top_p"),
            (GenerateRequest("m", "hi", sampling=Sampling(seed=2**40)), "seed"),
            (GenerateRequest("m", "hi", sampling=Sampling(stop=("a",) * 9)), "stop"),
        ],
    )
    def test_each_bad_field_is_named(self, request_: GenerateRequest, field: str) -> None:
        with pytest.raises(errors.InvalidRequest) as caught:
            validate_request(request_, self.limits)
        assert caught.value.field == field
