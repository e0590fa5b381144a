"""meshd/security/invite.py: codes, hosts, one-time secrets and the wrong-secret limiter, each
rule at its limit and one past it, with exact messages."""

from __future__ import annotations

import base64
import math
import os
import time

import pytest

from meshd.errors import InvalidRequest, Overloaded
from meshd.security.invite import (
    MAX_TTL_S,
    SECRET_BYTES,
    InviteBook,
    InviteCode,
    check_host,
    decode_invite,
)

FINGERPRINT, SECRET = bytes(range(32)), bytes(range(100, 116))
DAMAGED = "the invite code is damaged \\(an address does not parse\\)"
NOT_A_CODE = "not an invite code, or one from another meshd version"


class Clock:
    """A monotonic clock the test moves by hand, far from the real one."""

    def __init__(self) -> None:
        self.now = 1e9

    def __call__(self) -> float:
        return self.now


def raw_code(body: bytes) -> str:
    return "MESHD-" + base64.b32encode(body).decode().rstrip("=")


HEAD = bytes([1]) + FINGERPRINT + SECRET


class TestCodes:
    @pytest.mark.parametrize(
        "address", ["1.2.3.4:1", "1.2.3.4:65535", "[fe80::1]:32768", "mini.ts.net:40000"]
    )
    def test_every_port_round_trips(self, address: str) -> None:
        code = InviteCode((address,), FINGERPRINT, SECRET)
        assert decode_invite(code.encode()) == code

    def test_no_padding_is_printed(self) -> None:
        text = InviteCode(("1.2.3.4:7070",), FINGERPRINT, SECRET).encode()
        assert "=" not in text and text.startswith("MESHD-")
        assert text == raw_code(HEAD + bytes([4, 1, 2, 3, 4]) + (7070).to_bytes(2, "big"))

    def test_an_ipv6_address_is_packed_as_an_address(self) -> None:
        text = InviteCode(("[fe80::1]:32768",), FINGERPRINT, SECRET).encode()
        packed = bytes([6, 0xFE, 0x80]) + bytes(13) + bytes([1]) + (32768).to_bytes(2, "big")
        assert text == raw_code(HEAD + packed)

    def test_a_code_whose_last_character_is_x_keeps_it(self) -> None:
        for port in range(1, 2000):
            code = InviteCode((f"a.local:{port}",), FINGERPRINT, SECRET)
            if code.encode().endswith("X"):
                assert decode_invite(code.encode()) == code
                return
        pytest.fail("no code ended in X")

    def test_a_code_that_is_not_base32(self) -> None:
        with pytest.raises(InvalidRequest) as caught:
            decode_invite("MESHD-!!!!")
        assert str(caught.value) == "not an invite code (it should start with MESHD-)"

    def test_the_head_alone_or_less_is_not_a_code(self) -> None:
        with pytest.raises(InvalidRequest) as caught:
            decode_invite(raw_code(HEAD))
        assert str(caught.value) == NOT_A_CODE
        with pytest.raises(InvalidRequest, match=NOT_A_CODE):
            decode_invite(raw_code(HEAD[:-1]))

    def test_another_version(self) -> None:
        body = bytes([2]) + HEAD[1:] + bytes([4, 1, 2, 3, 4, 0, 80])
        with pytest.raises(InvalidRequest, match=NOT_A_CODE):
            decode_invite(raw_code(body))

    @pytest.mark.parametrize(
        "tail",
        [
            bytes([9, 1, 2, 3, 4, 0, 80]),  # an unknown address tag
            bytes([4, 1, 2, 3, 4, 0]),  # a port cut short
            bytes([6]) + bytes(15) + bytes([0, 80]),  # an IPv6 address cut short
            bytes([0]),  # a name tag and nothing else
            bytes([0, 5]) + b"ab",  # a name shorter than its length
            bytes([0, 2]) + b"ab" + bytes([1]),  # a port cut short after a name
        ],
    )
    def test_a_damaged_address(self, tail: bytes) -> None:
        with pytest.raises(InvalidRequest, match=DAMAGED):
            decode_invite(raw_code(HEAD + tail))

    def test_a_name_exactly_as_long_as_it_says(self) -> None:
        body = HEAD + bytes([0, 2]) + b"ab" + (443).to_bytes(2, "big")
        assert decode_invite(raw_code(body)).addresses == ("ab:443",)

    @pytest.mark.parametrize("name", [b"b\xffd", b"bad_host", b"-x"])
    def test_a_name_that_is_no_host_is_refused(self, name: bytes) -> None:
        body = HEAD + bytes([0, len(name)]) + name + (80).to_bytes(2, "big")
        with pytest.raises(InvalidRequest, match="not a host for an invite"):
            decode_invite(raw_code(body))


class TestHosts:
    @pytest.mark.parametrize("host", ["10.0.0.5", "fe80::1", "[fe80::1]", "mini.local", "a" * 63])
    def test_addresses_and_names_pass_unchanged(self, host: str) -> None:
        assert check_host(host) == host

    def test_the_refusal_names_the_field(self) -> None:
        with pytest.raises(InvalidRequest) as caught:
            check_host("10.0.0.5:7070")
        assert caught.value.field == "addresses"
        assert str(caught.value) == (
            "not a host for an invite: '10.0.0.5:7070' (an IP address or a DNS name, "
            "without a port)"
        )


class TestBook:
    def test_a_secret_has_its_full_length(self) -> None:
        assert len(InviteBook().create()) == SECRET_BYTES == 16

    @pytest.mark.parametrize("ttl", [0.0, -1.0, math.nan, math.inf, MAX_TTL_S + 1])
    def test_no_time_to_live_or_too_long_is_refused(self, ttl: float) -> None:
        book = InviteBook()
        with pytest.raises(InvalidRequest) as caught:
            book.create(ttl=ttl)
        assert str(caught.value) == "an invite is valid for some time, up to 7 days"
        assert caught.value.field == "ttl" and book.pending == {}
        assert book.create(ttl=MAX_TTL_S)

    def test_a_secret_is_used_up_only_when_the_join_succeeds(self) -> None:
        book = InviteBook()
        secret = book.create(ttl=60)
        with pytest.raises(ValueError), book.redeeming(secret):
            raise ValueError("a malformed certificate request")
        with book.redeeming(secret) as role:
            assert role == "peer"
        with pytest.raises(InvalidRequest, match="used or expired"):
            book.redeem(secret)

    def test_the_shortest_time_to_live_still_makes_a_secret(self) -> None:
        assert len(InviteBook().create(ttl=0.001)) == 16

    def test_a_secret_expires_exactly_at_its_time(self) -> None:
        clock = Clock()
        book = InviteBook(clock=clock)
        secret = book.create(ttl=10)
        assert book.next_expiry() == 1e9 + 10
        clock.now += 10
        with pytest.raises(InvalidRequest) as caught:
            book.redeem(secret)
        assert str(caught.value) == "this invite code is wrong, used or expired: ask for a new one"

    def test_a_secret_just_before_its_time_works_once(self) -> None:
        clock = Clock()
        book = InviteBook(clock=clock)
        secret = book.create(ttl=10, role="app")
        clock.now += 9.999
        assert book.redeem(secret) == "app"
        with pytest.raises(InvalidRequest):
            book.redeem(secret)

    def test_expire_uses_the_books_clock(self) -> None:
        clock = Clock()
        book = InviteBook(clock=clock)
        book.create(ttl=5)
        book.expire()
        assert book.pending
        clock.now += 5
        book.expire()
        assert not book.pending and book.next_expiry() is None

    def test_five_wrong_secrets_a_minute_then_a_pause(self) -> None:
        clock = Clock()
        book = InviteBook(clock=clock)
        good = book.create(ttl=600)
        for _ in range(4):
            with pytest.raises(InvalidRequest):
                book.redeem(os.urandom(16))
        clock.now += 1
        with pytest.raises(InvalidRequest):  # the fifth is still only wrong
            book.redeem(os.urandom(16))
        with pytest.raises(Overloaded) as caught:
            book.redeem(good)
        assert str(caught.value) == (
            "too many wrong invite secrets in the last minute: try again later"
        )
        clock.now += 59  # the first four are exactly a minute old: still counted
        with pytest.raises(Overloaded):
            book.redeem(good)
        clock.now += 0.5  # now they are older than a minute
        assert book.redeem(good) == "peer"


def test_an_invite_code_round_trips_and_fits_in_a_chat_message() -> None:
    code = InviteCode(("192.168.1.20:7071", "[fe80::1]:7071"), os.urandom(32), os.urandom(16))
    text = code.encode()
    assert text.startswith("MESHD-") and len(text) < 140
    named = InviteCode(("mini.tail1234.ts.net:7071",), os.urandom(32), os.urandom(16))
    assert decode_invite(named.encode()) == named
    assert decode_invite(text) == code
    assert decode_invite("  " + text.lower()[:40] + "\n" + text.lower()[40:]) == code


@pytest.mark.parametrize("text", ["", "MESHD-", "hello", "MESHD-AAAA", "MESHD-" + "A" * 90])
def test_a_damaged_code_is_a_clear_error(text: str) -> None:
    with pytest.raises(InvalidRequest, match="invite code"):
        decode_invite(text)


@pytest.mark.parametrize("host", ["10.0.0.5:7070", "bad_host", "-x", "", "a" * 64])
def test_an_invite_names_a_host_without_a_port(host: str) -> None:
    with pytest.raises(InvalidRequest, match="not a host for an invite"):
        check_host(host)


def test_a_secret_works_once_and_expires() -> None:
    book = InviteBook()
    secret = book.create(ttl=60)
    assert book.redeem(secret) == "peer"
    with pytest.raises(InvalidRequest):
        book.redeem(secret)
    short = book.create(ttl=0.05)
    time.sleep(0.1)
    with pytest.raises(InvalidRequest):
        book.redeem(short)
    assert book.next_expiry() is None


def test_wrong_secrets_are_limited_to_five_a_minute() -> None:
    book = InviteBook()
    good = book.create()
    for _ in range(5):
        with pytest.raises(InvalidRequest):
            book.redeem(os.urandom(16))
    with pytest.raises(Overloaded):
        book.redeem(good)
    book.wrong[0] -= 61  # the oldest wrong guess leaves the window
    assert book.redeem(good) == "peer"


def test_open_invites_are_kept_as_hashes_and_taken_back() -> None:
    clock = Clock()
    book = InviteBook(clock=clock)
    secret = book.create(ttl=600)
    book.create(ttl=10, role="app")
    clock.now += 20  # the second has ended
    records = book.to_records(now_unix=1_000_000.0)
    assert len(records) == 1 and secret.hex() not in str(records), "only a hash is kept"
    again = InviteBook(clock=Clock())
    damaged = [{"sha256": "zz"}, {"sha256": "ab" * 32, "role": "peer", "expires_unix": 1.0}]
    assert again.take_records([*records, *damaged], now_unix=1_000_100.0) == 1
    assert again.redeem(secret) == "peer"
    assert again.take_records("not a list", now_unix=0.0) == 0
