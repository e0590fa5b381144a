"""Pure decisions about what stays resident: memory-budget eviction and keep-alive expiry."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Resident:
    """A loaded model as the eviction policy sees it."""

    name: str
    memory: int
    pinned: bool
    busy: bool
    last_used: float
    warm_until: float
    last_request: float = 0.0  # when a request last asked for it (warms do not count)


def plan_eviction(
    residents: Sequence[Resident], need: int, budget: int, spare_asked_after: float = math.inf
) -> list[str] | None:
    """Names to unload (least recently used first) so that `need` more bytes fit the budget;
    models a request asked for after `spare_asked_after` are spared (a warm, which only
    guesses at a later request, never evicts what someone used recently; a request may).

    An empty list: it fits already. None: it cannot fit, even after evicting every idle,
    unpinned model it may evict.
    """
    used = sum(r.memory for r in residents)
    if used + need <= budget:
        return []
    victims: list[str] = []
    for resident in sorted(residents, key=lambda r: r.last_used):
        if resident.pinned or resident.busy or resident.last_request > spare_asked_after:
            continue
        victims.append(resident.name)
        used -= resident.memory
        if used + need <= budget:
            return victims
    return None


def expired(residents: Sequence[Resident], now: float) -> list[str]:
    """Idle, unpinned models whose keep-alive and lease have both run out."""
    return [r.name for r in residents if not r.pinned and not r.busy and r.warm_until <= now]


def warm_until(last_used: float, keep_alive: float, lease_until: float, pinned: bool) -> float:
    """When a model may be unloaded: after keep-alive from its last use or its lease, if later."""
    if pinned:
        return math.inf
    return max(last_used + keep_alive, lease_until)
