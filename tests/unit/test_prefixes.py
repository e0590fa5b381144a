"""Canonical text, fingerprints and slot choice: the pure parts of prefix warming."""

from __future__ import annotations

import asyncio
import random

import pytest

from meshd.engine.slots import SlotCache, SlotPool, pick_slot
from meshd.prefixes import (
    BLOCK_CHARS,
    canonical,
    fingerprints,
    shared_chars,
    warm_chars,
)
from meshd.types import ChatMessage

SYSTEM = ChatMessage("system", "You answer in French. " * 40)


def test_a_warmed_prefix_is_a_prefix_of_every_request_that_starts_with_it() -> None:
    question = ChatMessage("user", "Bonjour ?")
    assert canonical(None, [SYSTEM, question]).startswith(canonical(None, [SYSTEM]))
    assert canonical("Once upon a time, there", ()).startswith(canonical("Once upon", ()))
    # a prompt is never mistaken for a chat with the same words
    assert not canonical(SYSTEM.content, ()).startswith(canonical(None, [SYSTEM])[:5])


def test_shared_chars_against_the_obvious_definition() -> None:
    rng = random.Random(7)
    for _ in range(500):
        a = "".join(rng.choice("ab") for _ in range(rng.randrange(0, 12)))
        b = "".join(rng.choice("ab") for _ in range(rng.randrange(0, 12)))
        expected = next(
            (i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b))
        )
        assert shared_chars(a, b) == expected


def test_fingerprints_say_how_much_of_a_request_is_warm() -> None:
    held = canonical(None, [SYSTEM])
    request = canonical(None, [SYSTEM, ChatMessage("user", "Bonjour ?" * 100)])
    prints = fingerprints(held)
    assert len(prints) == len(held) // BLOCK_CHARS
    warm = warm_chars(fingerprints(request), prints)
    assert warm == (len(held) // BLOCK_CHARS) * BLOCK_CHARS
    other = canonical(None, [ChatMessage("system", "You answer in German. " * 40)])
    assert warm_chars(fingerprints(other), prints) == 0  # chained: a later block alone is no match
    assert len(fingerprints("x" * 10 * BLOCK_CHARS, limit=4)) == 4


def test_a_request_takes_the_slot_with_its_prefix_and_spares_held_ones() -> None:
    now = 1000.0
    caches = [
        SlotCache("\x1dYou are helpful. Answer briefly.", held_until=now + 60, last_used=1.0),
        SlotCache("\x1dTranslate this", held_until=now + 60, last_used=2.0),
        SlotCache("\x1dHi", last_used=3.0),
        SlotCache("", last_used=0.5),
    ]
    assert pick_slot(range(4), caches, "\x1dYou are helpful. Answer briefly. Why?", now) == 0
    assert pick_slot(range(4), caches, "\x1dHi there", now) == 2
    assert pick_slot(range(4), caches, "\x1dYou are rude.", now) in (2, 3)  # spares slot 0
    assert pick_slot([0, 1], caches, "\x1dSomething else", now) == 0  # no other: least recent
    assert pick_slot([0, 1], caches, "\x1dSomething", now + 120) == 0  # leases over: by use


def test_the_pool_hands_out_slots_in_turn_and_remembers_what_they_hold() -> None:
    async def scenario() -> None:
        pool = SlotPool(2)
        a, b = await pool.get("\x1dA"), await pool.get("\x1dB")
        pool.used(a, "\x1dA" * 300, hold_until=10**12)
        pool.used(b, "\x1dB")
        waiting = asyncio.ensure_future(pool.get("\x1dA" * 300 + "more"))
        await asyncio.sleep(0)
        assert not waiting.done() and pool.qsize() == 0
        pool.put_nowait(b)
        pool.put_nowait(a)
        assert await waiting == a  # both free by then: the one holding its prefix
        assert pool.fingerprints()  # the held prefix is announced
        cancelled = asyncio.ensure_future(pool.get())
        second = asyncio.ensure_future(pool.get())
        await asyncio.sleep(0)
        assert cancelled.done() and await cancelled == b  # b was still free
        await asyncio.sleep(0)
        assert not second.done()
        second.cancel()
        await asyncio.sleep(0)
        pool.put_nowait(a)
        assert await pool.get() == a  # a cancelled waiter never keeps a slot

    asyncio.run(scenario())


def test_canonical_text_has_a_fixed_form() -> None:
    chat = [ChatMessage("system", "A"), ChatMessage("user", "B")]
    assert canonical(None, chat) == "\x1esystem\x1fA\x1euser\x1fB"
    assert canonical(None, ()) == "\x1d" and canonical("Hi", ()) == "\x1dHi"


def test_fingerprints_are_a_blake2b_chain_that_fits_64_bits() -> None:
    import hashlib

    text = "a" * BLOCK_CHARS + "b" * BLOCK_CHARS + "c" * (BLOCK_CHARS - 1)
    first = hashlib.blake2b(b"a" * BLOCK_CHARS, digest_size=8).digest()
    second = hashlib.blake2b(first + b"b" * BLOCK_CHARS, digest_size=8).digest()
    assert fingerprints(text) == [int.from_bytes(first, "big"), int.from_bytes(second, "big")]
    odd = fingerprints("\ud800" * BLOCK_CHARS * 2)  # a lone surrogate from a client: no error
    assert len(odd) == 2 and all(0 <= p < 2**64 for p in odd)


def test_warm_chars_finds_the_longest_held_block_boundary() -> None:
    one = fingerprints("x" * BLOCK_CHARS)
    assert warm_chars(fingerprints("x" * (BLOCK_CHARS + 40)), one) == BLOCK_CHARS
    two = fingerprints("x" * BLOCK_CHARS + "y" * BLOCK_CHARS)
    assert warm_chars(two, one) == BLOCK_CHARS  # the second block differs
    assert warm_chars(two, two) == 2 * BLOCK_CHARS
    assert warm_chars([], two) == 0


def test_held_prefixes_slot_state_and_ties() -> None:
    now = 1000.0
    boundary = [SlotCache("\x1dheld", held_until=now), SlotCache("\x1dx", last_used=5.0)]
    assert pick_slot([0, 1], boundary, "\x1dother", now) == 0  # a lease ending now: not held

    async def scenario() -> None:
        assert SlotPool().qsize() == 0 and SlotPool(1).fingerprints() == ()
        pool = SlotPool(3)
        pool.used(0, "\x1dprefix", hold_until=10**12)
        pool.used(0, "\x1dprefix and more")  # a request that extends it: still held
        assert pool.caches[0].held_until == 10**12
        pool.used(1, "\x1dtwo", hold_until=10**12)
        pool.used(1, "\x1dsomething else")  # one that does not: no longer held
        assert pool.caches[1].held_until == 0.0
        pool.used(2, "\x1dz")
        pool.used(1, "\x1dy")  # now slot 2 is the least recently used
        taken = [await pool.get("\x1dq") for _ in range(3)]
        assert taken == [2, 1, 0]  # least recently used first; the held one last

    asyncio.run(scenario())


def test_a_cancelled_wait_for_a_slot_leaves_no_waiter() -> None:
    async def scenario() -> None:
        pool = SlotPool(1)
        slot = await pool.get()
        waiting = asyncio.ensure_future(pool.get())
        await asyncio.sleep(0)
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        assert not pool._waiters
        pool.put_nowait(slot)
        assert await pool.get() == slot

    asyncio.run(scenario())


def test_a_held_prefix_is_announced_first_when_fingerprints_overflow() -> None:
    from meshd.prefixes import MAX_FINGERPRINTS

    pool = SlotPool(2)
    pool.used(0, "a" * 100 * BLOCK_CHARS)
    pool.used(1, "b" * 100 * BLOCK_CHARS, hold_until=10**12)
    prints = pool.fingerprints()
    assert len(prints) == MAX_FINGERPRINTS
    assert prints[:100] == tuple(fingerprints("b" * 100 * BLOCK_CHARS))
