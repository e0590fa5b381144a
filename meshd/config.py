"""Frozen settings for one daemon: TOML file in the meshd home, then MESHD_* env, then flags."""

from __future__ import annotations

import os
import re
import sys
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

from meshd.chattemplates import ChatTemplate, parse_chat_template
from meshd.errors import ConfigError, InvalidRequest
from meshd.prefixes import MAX_PREFIX_FILE_BYTES, read_prefix_file

CONFIG_FILE = "meshd.toml"
DEFAULT_LISTEN = "0.0.0.0:7070"  # every interface, but only ever with mutual TLS
MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}\Z")
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*\Z")
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(b|k|kb|kib|m|mb|mib|g|gb|gib|t|tb|tib)?\s*\Z", re.I)
_UNITS_S = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_UNITS_B = {"": 1, "b": 1, "k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40}


@dataclass(frozen=True)
class ModelSpec:
    """A model this peer serves: its name, its GGUF file, and the chat template meshd.toml
    names for it (None: the file's own, else a built-in one for its family)."""

    name: str
    path: Path
    chat_template: ChatTemplate | None = None
    lock_memory: bool | None = None  # lock its weights in memory (None: the global setting)


@dataclass(frozen=True)
class PinnedPrefix:
    """A prompt's beginning kept warm in a slot of its model whenever the model is loaded (and
    saved to disk as llama.cpp state, so that a load restores it instead of evaluating it)."""

    name: str
    model: str
    text: str


@dataclass(frozen=True)
class Settings:
    """Everything one daemon needs to know; built once by load_settings()."""

    home: Path
    listen: str = DEFAULT_LISTEN
    models: tuple[ModelSpec, ...] = ()
    pins: frozenset[str] = frozenset()
    slots: int = 4  # sequences each model serves at once, in one batch (meshd.runner.batching)
    context: int = 2048  # tokens each sequence holds
    threads: int = 0  # 0: one per performance (else physical) core (load_settings fills it in)
    batch: int = 512
    # Layers of each model on the GPU: -1 ("auto") all of them where llama.cpp was built with a
    # GPU backend (Metal on a Mac), none where it was not.
    gpu_layers: int = -1
    keep_alive: float = 1800.0
    memory_budget: int = 0  # 0: leave 25% of RAM free (load_settings fills it in)
    max_queue: int = 8
    max_tokens_cap: int = 4096
    max_prompt_bytes: int = 256 * 1024
    max_message_bytes: int = 1024 * 1024
    drain_seconds: float = 10.0
    # The largest model file a pull takes when the source does not say its size.
    max_pull_bytes: int = 256 * 2**30
    # Concurrent TCP connections (peers and apps); at most half the open-file limit.
    max_connections: int = 256
    use_mmap: bool = True
    # Lock every model's weights in memory (mlock), within the memory budget; per model too.
    lock_memory: bool = False
    # A model's runner that sends nothing for this long while serving a request is killed.
    runner_stall_timeout: float = 60.0
    # A runner resident past this is killed, with the reason (0: twice what its model needs,
    # weights, KV cache and scratch, plus 1 GiB).
    runner_memory_limit: int = 0
    # Keep one runner process started ahead (~50 MB), so a model load skips ~0.3 s of startup.
    spare_runner: bool = True
    # The mesh.
    mesh_id: str = "default"
    peers: tuple[str, ...] = ()  # static peers, host:port (other houses, Tailscale)
    advertise: str = ""  # the address other peers use for this one [default: the bound one]
    discovery: bool = True  # mDNS on the local network
    heartbeat_interval: float = 1.0
    dead_after: float = 2.5  # no good heartbeat for this long: out of routing
    # The daemon's log, logs/meshd.log in the home: rotated at this size, older ones kept.
    log_max_bytes: int = 10 * 2**20
    log_backups: int = 4
    # Keep the machine from idle sleep: "always" (while the daemon runs), "while-warm" (while it
    # holds a warm model or a lease) or "never". The display may always sleep.
    keep_awake: str = "always"
    # Yield to the owner (be the mesh's last resort) when other processes use more than this
    # share of the CPU, or on battery; under critical memory pressure idle models are unloaded.
    yield_to_host: bool = True
    yield_busy_cpu: float = 0.75
    yield_on_battery: bool = True
    # Pinned prefixes, [prefixes.NAME] with model and text (or file, from the home).
    prefixes: tuple[PinnedPrefix, ...] = ()
    # Route a request to the peer holding its prompt's prefix warm, counting the prefill that
    # each peer would still do (off: by load and RTT alone, as before prefix warming).
    route_by_prefix: bool = True
    # Models kept warm on this many peers while apps use them through this peer, e.g.
    # {gemma = 2}: peers that lack the file pull a copy from one that has it.
    auto_replicas: tuple[tuple[str, int], ...] = ()
    # Work done on others' behalf: model files pulled as replicas for other peers and apps
    # (at most this many, and this many bytes: 0 is a quarter of the disk), removed once
    # nobody used them for replica_expire_after; and leases remote callers ask for, capped.
    replica_max_models: int = 4
    replica_max_bytes: int = 0
    replica_expire_after: float = 7 * 86400.0
    remote_lease_cap: float = 3600.0
    # Renew this peer's mesh certificate from a CA holder once it ends within this long.
    renew_before: float = 30 * 86400.0
    # Local hours when this peer takes no mesh requests, e.g. "23:00-07:00" ("": none).
    quiet_hours: str = ""
    # While paused (or in quiet hours), unload models unused this long (pins excepted; 0: keep).
    paused_unload_after: float = 1800.0
    # The HTTP door (OpenAI-compatible API, warm endpoint, metrics, chat page). Loopback needs
    # no key; any other address needs API keys (`meshd invite --client --api-key`).
    http: bool = True
    http_listen: str = "127.0.0.1:7071"
    http_origins: tuple[str, ...] = ()  # browser origins allowed [default: localhost, apps]
    http_hosts: tuple[str, ...] = ()  # Host names served keyless besides loopback ones
    # Plaintext TCP for a peer outside any mesh: local experiments, tests, benchmarks only.
    insecure_dev: bool = False

    def model_paths(self) -> dict[str, Path]:
        """Models by name."""
        return {spec.name: spec.path for spec in self.models}


def default_home(user_home: Path | None = None) -> Path:
    """The per-user data folder: ~/Library/Application Support/meshd or $XDG_DATA_HOME/meshd
    (of this user, or of the one whose home folder is user_home)."""
    home = user_home or Path.home()
    if sys.platform == "darwin":
        return home / "Library" / "Application Support" / "meshd"
    xdg = os.environ.get("XDG_DATA_HOME") if user_home is None else None
    base = xdg or str(home / ".local" / "share")
    return Path(base) / "meshd"


def parse_duration(value: str | float | int) -> float:
    """Seconds from 90, "90s", "500ms", "5m", "1.5h" or "2d"."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        seconds = float(value)
    else:
        match = _DURATION.match(str(value))
        if not match:
            raise ConfigError(f"not a duration: {value!r} (try 90s, 5m or 1h)")
        seconds = float(match.group(1)) * _UNITS_S[match.group(2) or "s"]
    if seconds < 0:
        raise ConfigError(f"a duration cannot be negative: {value!r}")
    return seconds


def parse_size(value: str | int) -> int:
    """Bytes from 1048576, "512MiB", "8G" or "1.5GB" (powers of two)."""
    if isinstance(value, int) and not isinstance(value, bool):
        size = value
    else:
        match = _SIZE.match(str(value))
        if not match:
            raise ConfigError(f"not a size: {value!r} (try 512MiB or 8GiB)")
        unit = (match.group(2) or "").lower()[:1]
        size = int(float(match.group(1)) * _UNITS_B[unit])
    if size < 0:
        raise ConfigError(f"a size cannot be negative: {value!r}")
    return size


def parse_listen(value: str) -> str:
    """A host:port the daemon binds; port 0 picks a free one."""
    host, sep, port = str(value).rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(f"not a host:port address: {value!r}")
    return str(value)


def parse_model(value: str, base: Path | None = None) -> ModelSpec:
    """A ModelSpec from "name=path"; a relative path is taken from base (default: cwd)."""
    name, sep, path = str(value).partition("=")
    if not sep or not path:
        raise ConfigError(f"a model is NAME=PATH, got {value!r}")
    return model_spec(name.strip(), path.strip(), base)


def model_spec(name: str, path: str, base: Path | None = None) -> ModelSpec:
    """A validated ModelSpec."""
    if not MODEL_NAME.match(name):
        raise ConfigError(f"bad model name {name!r}: letters, digits, '.', '_' or '-', 64 at most")
    resolved = Path(path).expanduser()
    if not resolved.is_absolute():
        resolved = (base or Path.cwd()) / resolved
    return ModelSpec(name, resolved.resolve())


def _positive_int(value: Any) -> int:
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise ConfigError(f"not a whole number: {value!r}") from None
    if number < 0 or isinstance(value, bool):
        raise ConfigError(f"must be a whole number ≥ 0: {value!r}")
    return number


def _boolean(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in {"1", "true", "yes", "on"}:
        return True
    if text in {"0", "false", "no", "off"}:
        return False
    raise ConfigError(f"not a yes/no value: {value!r}")


KEEP_AWAKE = ("always", "while-warm", "never")
MAX_AUTO_REPLICAS = 16


def _share(value: Any) -> float:
    try:
        share = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"not a share between 0 and 1: {value!r}") from None
    if not 0 < share <= 1:
        raise ConfigError(f"not a share between 0 and 1: {value!r}")
    return share


def _quiet_hours(value: Any) -> str:
    from meshd.pause import parse_quiet_hours

    parse_quiet_hours(str(value))
    return str(value)


def _keep_awake(value: Any) -> str:
    if str(value) not in KEEP_AWAKE:
        raise ConfigError(f"keep_awake must be one of {', '.join(KEEP_AWAKE)}, got {value!r}")
    return str(value)


def _list(value: Any) -> list[str]:
    items = value.split(",") if isinstance(value, str) else list(value)
    return [str(item).strip() for item in items if str(item).strip()]


def _pins(value: Any) -> frozenset[str]:
    return frozenset(_list(value))


def _auto_replicas(value: Any) -> tuple[tuple[str, int], ...]:
    if isinstance(value, Mapping):
        pairs = list(value.items())
    else:
        pairs = [item.partition("=")[::2] for item in _list(value)]
    counts = []
    for name, count in pairs:
        if not MODEL_NAME.match(str(name).strip()):
            raise ConfigError(f"bad model name {str(name)!r}")
        number = _positive_int(count)
        if number > MAX_AUTO_REPLICAS:
            raise ConfigError(f"{name}: at most {MAX_AUTO_REPLICAS} replicas, got {number}")
        counts.append((str(name).strip(), number))
    return tuple(counts)


def _prefixes(value: Any, base: Path | None) -> tuple[PinnedPrefix, ...]:
    if not isinstance(value, Mapping):
        raise ConfigError("a table: [prefixes.NAME] with model = ... and text = ... or file = ...")
    pinned = []
    for name, entry in value.items():
        if not MODEL_NAME.match(str(name)):
            raise ConfigError(f"bad prefix name {str(name)!r}")
        if not isinstance(entry, Mapping) or not MODEL_NAME.match(str(entry.get("model", ""))):
            raise ConfigError(f"{name}: needs model = the name of one of this peer's models")
        text, file = entry.get("text"), entry.get("file")
        if (text is None) == (file is None):
            raise ConfigError(f"{name}: give text = ... or file = ..., one of them")
        if file is not None:
            text = _prefix_file(Path(str(file)).expanduser(), base, str(name))
        if not isinstance(text, str) or not text.strip():
            raise ConfigError(f"{name}: the prefix is empty")
        if len(text.encode()) > MAX_PREFIX_FILE_BYTES:
            raise ConfigError(f"{name}: the prefix is over 1 MiB")
        pinned.append(PinnedPrefix(str(name), str(entry["model"]), text))
    return tuple(pinned)


def _prefix_file(path: Path, base: Path | None, name: str) -> str:
    if not path.is_absolute() and base is not None:
        path = base / path
    try:
        return read_prefix_file(path)
    except InvalidRequest as exc:
        raise ConfigError(f"{name}: {exc}") from None


def _mesh_id(value: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}", value):
        raise ConfigError(f"bad mesh id {value!r}: letters, digits, '.', '_' or '-'")
    return value


def _models(value: Any, base: Path | None) -> tuple[ModelSpec, ...]:
    if isinstance(value, Mapping):
        return tuple(_model_entry(str(k), v, base) for k, v in value.items())
    items = value.split(",") if isinstance(value, str) else list(value)
    return tuple(parse_model(str(item), base) for item in items if str(item).strip())


MODEL_KEYS = ("file", "chat_template", "lock_memory")


def _model_entry(name: str, entry: Any, base: Path | None) -> ModelSpec:
    """`name = "path"`, or a table: `[models.NAME]` with file = ..., chat_template = ... and
    lock_memory = true/false."""
    if not isinstance(entry, Mapping):
        return model_spec(name, str(entry), base)
    unknown = sorted(set(entry) - set(MODEL_KEYS))
    if unknown:
        raise ConfigError(f"{name}: unknown key {unknown[0]!r} (known: {', '.join(MODEL_KEYS)})")
    if not isinstance(entry.get("file"), str) or not entry["file"]:
        raise ConfigError(f"{name}: needs file = the path of its GGUF")
    template = entry.get("chat_template")
    if template is not None and not isinstance(template, str):
        raise ConfigError(f"{name}: chat_template must be a string")
    lock = entry.get("lock_memory")
    if lock is not None and not isinstance(lock, bool):
        raise ConfigError(f"{name}: lock_memory must be true or false")
    spec = replace(model_spec(name, entry["file"], base), lock_memory=lock)
    try:
        chosen = parse_chat_template(template, base) if template is not None else None
    except ConfigError as exc:
        raise ConfigError(f"{name}: {exc}") from None
    return replace(spec, chat_template=chosen)


_PARSERS: dict[str, Callable[[Any], Any]] = {
    "listen": parse_listen,
    "pins": _pins,
    "slots": _positive_int,
    "context": _positive_int,
    "threads": _positive_int,
    "batch": _positive_int,
    "gpu_layers": lambda v: -1 if str(v).strip().lower() == "auto" else _positive_int(v),
    "keep_alive": parse_duration,
    "memory_budget": parse_size,
    "max_queue": _positive_int,
    "max_tokens_cap": _positive_int,
    "max_prompt_bytes": parse_size,
    "max_message_bytes": parse_size,
    "drain_seconds": parse_duration,
    "max_connections": _positive_int,
    "max_pull_bytes": parse_size,
    "use_mmap": _boolean,
    "lock_memory": _boolean,
    "runner_stall_timeout": parse_duration,
    "runner_memory_limit": parse_size,
    "replica_max_models": _positive_int,
    "replica_max_bytes": parse_size,
    "replica_expire_after": parse_duration,
    "remote_lease_cap": parse_duration,
    "spare_runner": _boolean,
    "mesh_id": lambda v: _mesh_id(str(v)),
    "peers": lambda v: tuple(parse_listen(p) for p in _list(v)),
    "advertise": lambda v: parse_listen(str(v)) if str(v) else "",
    "discovery": _boolean,
    "heartbeat_interval": parse_duration,
    "dead_after": parse_duration,
    "insecure_dev": _boolean,
    "http": _boolean,
    "log_max_bytes": parse_size,
    "log_backups": _positive_int,
    "keep_awake": _keep_awake,
    "quiet_hours": _quiet_hours,
    "paused_unload_after": parse_duration,
    "auto_replicas": _auto_replicas,
    "route_by_prefix": _boolean,
    "renew_before": parse_duration,
    "yield_to_host": _boolean,
    "yield_busy_cpu": _share,
    "yield_on_battery": _boolean,
    "http_listen": parse_listen,
    "http_origins": lambda v: tuple(str(o) for o in _list(v)),
    "http_hosts": lambda v: tuple(str(h) for h in _list(v)),
}


def _apply(
    settings: Settings, source: Mapping[str, Any], origin: str, base: Path | None
) -> Settings:
    """Overlay one source of raw values; models from several sources merge by name."""
    changes: dict[str, Any] = {}
    known = {f.name for f in fields(Settings)} - {"home"}
    for key, raw in source.items():
        if raw is None:
            continue
        if key not in known:
            raise ConfigError(f"{origin}: unknown setting {key!r}")
        try:
            if key == "models":
                merged = {m.name: m for m in settings.models}
                merged |= {m.name: m for m in _models(raw, base)}
                changes[key] = tuple(merged.values())
            elif key == "prefixes":
                changes[key] = _prefixes(raw, base)
            else:
                changes[key] = _PARSERS[key](raw)
        except ConfigError as exc:
            raise ConfigError(f"{origin}: {key}: {exc}") from None
    return replace(settings, **changes)


def _read_toml(path: Path) -> dict[str, Any]:
    if not path.exists():
        return {}
    try:
        with path.open("rb") as handle:
            return tomllib.load(handle)
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"cannot read {path}: {exc}") from None


def _from_env(environ: Mapping[str, str]) -> dict[str, str]:
    prefix = "MESHD_"
    names = {f.name for f in fields(Settings)} - {"home"}
    return {
        key[len(prefix) :].lower(): value
        for key, value in environ.items()
        if key.startswith(prefix) and key[len(prefix) :].lower() in names
    }


def load_settings(
    home: Path | None = None,
    flags: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
) -> Settings:
    """Settings from the home's meshd.toml, then MESHD_* variables, then flags (None = unset)."""
    env = os.environ if environ is None else environ
    root = Path(home or env.get("MESHD_HOME") or default_home()).expanduser().resolve()
    settings = Settings(home=root)
    config_path = root / CONFIG_FILE
    settings = _apply(settings, _read_toml(config_path), str(config_path), root)
    settings = _apply(settings, _from_env(env), "environment", None)
    settings = _apply(settings, flags or {}, "command line", None)
    if settings.slots < 1 or settings.context < 16:
        raise ConfigError("slots must be ≥ 1 and context ≥ 16")
    return with_machine_defaults(settings)


def with_machine_defaults(settings: Settings) -> Settings:
    """Settings left at 0 that depend on this machine, filled in: the one place they are."""
    if settings.memory_budget and settings.threads:
        return settings
    import platform

    import psutil  # here, not at the top: the CLI reads settings on every command

    from meshd.macos import performance_cores

    budget, threads = machine_defaults(
        sys.platform,
        platform.machine(),
        psutil.virtual_memory().total,
        psutil.cpu_count(logical=False) or psutil.cpu_count(),
        performance_cores(),
    )
    return replace(
        settings,
        memory_budget=settings.memory_budget or budget,
        threads=settings.threads or threads,
    )


METAL_SMALL_RAM = 36 * 2**30  # up to this much RAM, Metal's working set is about two thirds


def machine_defaults(
    platform: str, machine: str, total: int, physical: int | None, performance: int | None
) -> tuple[int, int]:
    """The memory budget and llama.cpp threads for a machine: a quarter of RAM left free (on
    Apple Silicon, no more than Metal's recommended working set: about two thirds of RAM up to
    36 GiB, three quarters above, past which Metal's command buffers fail); one thread per
    performance core where the machine says how many (an M4 mini's 4 of its 10), else per
    physical core, as llama.cpp's own default."""
    share = 3 / 4
    if platform == "darwin" and machine == "arm64" and total <= METAL_SMALL_RAM:
        share = 2 / 3
    return int(total * share), performance or physical or 1
