"""`meshd doctor`: each check says what it saw and, when it fails, the one thing to do.

Checks read local state and talk only to this peer's daemon and to the peers it already
knows; nothing is sent to any other address.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import psutil

from meshd import service
from meshd.addresses import is_loopback, read_interfaces, usable_ipv4
from meshd.alwayson import always_on
from meshd.checks import Check
from meshd.client import MeshClient
from meshd.config import Settings
from meshd.daemonfile import running_daemon
from meshd.errors import InvalidModelFile, MeshdError
from meshd.macchecks import mac_checks, read_mac_state
from meshd.memlock import how_to_raise, memlock_limit
from meshd.renewal import read_record
from meshd.security.credentials import TlsCredentials
from meshd.security.keyring import Keyring
from meshd.store import ModelStore
from meshd.types import MeshStatus, ModelInfo

CERT_WARN_DAYS = 30
MAX_SKEW_S = 60.0  # certificates allow 5 minutes; complain well before that
MIN_FREE_BYTES = 1 << 30
PEER_TIMEOUT_S = 3.0


def run_checks(settings: Settings) -> list[Check]:
    """Every check, in the order a person would fix them."""
    keyring = Keyring(settings.home)
    record = running_daemon(settings.home)
    checks = [_identity(keyring), _certificate(keyring)]
    daemon_check, mesh, models = _daemon(record)
    checks += [daemon_check, _listening(settings, keyring, record), _multicast(settings)]
    checks += _peers(keyring, mesh)
    checks += [_store(settings), _memory(), _memory_lock(settings, models or [])]
    mac = read_mac_state()  # None off macOS
    checks += always_on(settings, record, mac.pmset if mac else None)
    paths = [settings.home, Path(sys.prefix), *(spec.path for spec in settings.models)]
    found = service.installed(settings.home)
    checks += mac_checks(mac, models, paths, found, settings.drain_seconds)
    return checks


def _identity(keyring: Keyring) -> Check:
    ca = keyring.ca()
    if ca is None:
        fix = "run `meshd init --name NAME` on the first peer, `meshd join CODE` on the others"
        return Check("mesh identity", "fail", "this peer belongs to no mesh", fix)
    role = "CA holder (invites, revokes, renews)" if keyring.is_founder() else "member"
    return Check("mesh identity", "ok", f"{keyring.peer_id()}, {role}")


def _certificate(keyring: Keyring) -> Check:
    cert = keyring.certificate()
    if cert is None:
        return Check("certificate", "skip", "no certificate yet")
    days = (cert.not_valid_after_utc.timestamp() - time.time()) / 86400
    fix = "ask a CA holder for a new invite, then `meshd leave` and `meshd join CODE`"
    if days <= 0:
        return Check("certificate", "fail", "expired: peers refuse this peer", fix)
    renewal = read_record(keyring)
    if renewal.failing:
        since = time.strftime("%Y-%m-%d %H:%M", time.localtime(renewal.failing_since))
        why = f"renewal failed {renewal.failures} times since {since}: {renewal.last_error}"
        fix = "keep the daemon running while a CA holder is reachable (it renews by itself)"
        return Check("certificate", "warn", f"expires in {days:.0f} days; {why}", fix)
    if days < CERT_WARN_DAYS:
        return Check("certificate", "warn", f"expires in {days:.0f} days", fix)
    return Check("certificate", "ok", f"valid for {days:.0f} more days, renewed automatically")


def _daemon(
    record: dict[str, str] | None,
) -> tuple[Check, MeshStatus | None, list[ModelInfo] | None]:
    fix = "run `meshd service install` (or `meshd serve` in a terminal)"
    if record is None:
        return Check("daemon", "fail", "not running", fix), None, None
    try:
        with MeshClient(record["socket"], timeout=PEER_TIMEOUT_S) as local:
            serving = local.health()
            mesh = local.mesh_status()
            models = local.models()
    except MeshdError as error:
        detail = f"pid {record['pid']} does not answer: {error}"
        return Check("daemon", "fail", detail, fix), None, None
    if not serving:
        detail = "running but not serving (starting or draining)"
        return Check("daemon", "fail", detail, fix), mesh, models
    return (
        Check("daemon", "ok", f"pid {record['pid']}, serving on {record['socket']}"),
        mesh,
        models,
    )


def _listening(settings: Settings, keyring: Keyring, record: dict[str, str] | None) -> Check:
    address = (record or {}).get("address", "")
    host = settings.listen.rpartition(":")[0]
    if keyring.ca() is None:
        if settings.insecure_dev and address:
            fix = "join a mesh; --insecure-dev is for local experiments"
            return Check("listening", "warn", f"{address} in plaintext (--insecure-dev)", fix)
        return Check("listening", "ok", "only the local socket (no mesh yet)")
    if record is not None and not address:
        return Check("listening", "fail", "no TCP port", "restart the daemon")
    if is_loopback(host):
        fix = 'set listen = "0.0.0.0:7070" in meshd.toml so friends can reach this peer'
        return Check("listening", "warn", f"{settings.listen} is this machine only", fix)
    return Check("listening", "ok", f"{address or settings.listen}, mutual TLS only")


def _multicast(settings: Settings) -> Check:
    if not settings.discovery:
        return Check("mDNS", "skip", "discovery is off; static peers only")
    # The interfaces discovery announces on: a Mac's always-up tunnels (utun), AirDrop's awdl0
    # and VM bridges can multicast too, but no friend is on them.
    lan = [i for i in read_interfaces() if usable_ipv4([i]) and i.multicast]
    if not lan:
        fix = "connect to the LAN (Wi-Fi or Ethernet), or list friends with peers = [...]"
        return Check("mDNS", "fail", "no LAN interface that can multicast is up", fix)
    return Check("mDNS", "ok", f"multicast on {', '.join(sorted(i.name for i in lan)[:3])}")


def _peers(keyring: Keyring, mesh: MeshStatus | None) -> list[Check]:
    if mesh is None:
        return [Check("peers", "skip", "the daemon does not answer")]
    others = [p for p in mesh.peers if not p.local]
    if not others:
        fix = "invite a friend (`meshd invite`), or check mDNS and the Local Network hint"
        return [Check("peers", "warn", "no other peer known", fix)]
    credentials = keyring.credentials()
    return [_peer(p.info.peer_id, p.info.address, p.alive, credentials) for p in others]


def _peer(peer_id: str, address: str, alive: bool, credentials: TlsCredentials | None) -> Check:
    name = f"peer {peer_id}"
    try:
        asked = time.time()
        client = MeshClient(
            address, credentials=credentials, timeout=PEER_TIMEOUT_S, peer_id=peer_id
        )
        with client as peer:
            clock = peer.status().clock
        answered = time.time()
    except MeshdError as error:
        fix = "is it on and awake? same network? (`meshd doctor` on that machine)"
        return Check(name, "fail", f"{address}: {error}", fix)
    skew = clock - (asked + answered) / 2
    if abs(skew) > MAX_SKEW_S:
        fix = "turn on automatic date and time on both machines"
        return Check(name, "fail", f"{address}: clocks differ by {skew:+.0f} s", fix)
    state = "live" if alive else "answers TLS but misses heartbeats"
    return Check(name, "ok" if alive else "warn", f"{address}: {state}, clock {skew:+.1f} s")


def _store(settings: Settings) -> Check:
    store = ModelStore(settings.home)
    try:
        models = store.models()
        for model in models:
            store.checked_path(model.name)  # present, right size; `models --verify` hashes
    except InvalidModelFile as error:
        return Check("store", "fail", str(error), "run `meshd pull` for that model again")
    return Check("store", "ok", f"{len(models)} model(s), files present")


def _memory() -> Check:
    memory = psutil.virtual_memory()
    detail = f"{memory.available / 2**30:.1f} GiB of {memory.total / 2**30:.1f} GiB available"
    if memory.available < MIN_FREE_BYTES:
        fix = "close other apps, or lower memory_budget in meshd.toml"
        return Check("memory", "warn", detail, fix)
    return Check("memory", "ok", detail)


def _memory_lock(settings: Settings, models: list[ModelInfo]) -> Check:
    """Whether the models lock_memory asks for are locked, or can be."""
    wanted = {
        spec.name
        for spec in settings.models
        if (spec.lock_memory if spec.lock_memory is not None else settings.lock_memory)
    }
    if settings.lock_memory:
        wanted |= {m.name for m in models}
    if not wanted:
        return Check("memory lock", "skip", "lock_memory is off (the OS may page idle models out)")
    unlocked = [m.name for m in models if m.name in wanted and m.runner_pid and not m.lock_memory]
    if unlocked:
        detail = f"lock_memory is on but {', '.join(sorted(unlocked))} is not locked"
        return Check("memory lock", "fail", detail, how_to_raise())
    limit = memlock_limit()
    biggest = max((m.size_bytes for m in models if m.name in wanted), default=0)
    if limit is not None and limit < biggest and os.geteuid() != 0:
        detail = (
            f"the OS lets this user lock {limit // 2**20} MiB; "
            f"the weights are {biggest // 2**20} MiB"
        )
        return Check("memory lock", "warn", detail, how_to_raise())
    return Check("memory lock", "ok", f"the weights of {', '.join(sorted(wanted))} can be locked")


def failed(checks: list[Check]) -> bool:
    """True when any check failed."""
    return any(c.outcome == "fail" for c in checks)
