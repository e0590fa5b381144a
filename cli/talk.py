"""Commands that talk to a running daemon: generate, warm, models, health."""

from __future__ import annotations

import dataclasses
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from meshd.config import parse_duration
from meshd.daemonfile import running_daemon_http
from meshd.errors import InvalidRequest
from meshd.prefixes import read_prefix_file
from meshd.types import PAGED_OUT_BELOW

if TYPE_CHECKING:
    from meshd.types import Chunk, MeshStatus, ModelInfo

from .common import (
    AddrOption,
    HomeOption,
    JsonOption,
    console,
    err_console,
    errors_as_exit,
    human_ago,
    human_bytes,
    human_duration,
    human_until,
    open_client,
    print_json,
    running_http,
    settings_of,
)
from .tables import Column, WideOption, show, table


def _print_stats(
    first: Chunk | None, first_at: float, ttft_ms: float | None, last: Chunk | None
) -> None:
    """One dim line on stderr: tokens, time to first token, decode rate, who served."""
    if last is None or first is None:
        return
    decode = time.perf_counter() - first_at
    rate = (last.tokens - first.tokens) / decode if decode > 0 else 0.0
    err_console.print(
        f"[dim]{last.tokens} tokens · first token {ttft_ms:.0f} ms · "
        f"{rate:.1f} tok/s · {last.finish_reason} · served by {last.served_by}[/]",
        highlight=False,
    )


def generate(
    model: str = typer.Argument(..., help="Model name."),
    prompt: str = typer.Argument(..., help="Prompt text (with --chat: the user's message)."),
    max_tokens: int = typer.Option(256, "--max-tokens", "-n", help="Most tokens to generate."),
    temperature: float = typer.Option(0.8, help="0 is greedy."),
    top_p: float = typer.Option(0.95),
    top_k: int = typer.Option(40),
    seed: int | None = typer.Option(None, help="Fixed seed for repeatable output."),
    stop: list[str] = typer.Option([], help="Stop at this text; repeat."),
    chat: bool = typer.Option(False, "--chat", help="Send as a chat message (model template)."),
    addr: str | None = AddrOption,
    home: Path | None = HomeOption,
    json_out: bool = JsonOption,
) -> None:
    """Stream a completion as it is generated."""
    with errors_as_exit(), open_client(addr, home) as mesh:
        options = dict(
            max_tokens=max_tokens,
            temperature=temperature,
            top_p=top_p,
            top_k=top_k,
            seed=seed,
            stop=stop,
        )
        text_in = {"messages": [{"role": "user", "content": prompt}]} if chat else {}
        started = time.perf_counter()
        first: Chunk | None = None
        first_at, last, parts = 0.0, None, []
        for chunk in mesh.generate(model, None if chat else prompt, **text_in, **options):  # type: ignore[arg-type]
            if first is None:
                first, first_at = chunk, time.perf_counter()
            last = chunk
            parts.append(chunk.text)
            if not json_out:
                sys.stdout.write(chunk.text)
                sys.stdout.flush()
        ttft_ms = round(1000 * (first_at - started), 2) if first else None
        if json_out:
            print_json(
                {
                    "model": model,
                    "text": "".join(parts),
                    "tokens": last and last.tokens,
                    "prompt_tokens": last and last.prompt_tokens,
                    "finish_reason": last and last.finish_reason,
                    "served_by": last and last.served_by,
                    "ttft_ms": ttft_ms,
                }
            )
        else:
            sys.stdout.write("\n")
            _print_stats(first, first_at, ttft_ms, last)


def warm(
    model: str = typer.Argument(..., help="Model name."),
    lease: str = typer.Option("5m", help="Keep it warm at least this long."),
    wait: bool = typer.Option(False, "--wait", help="Return only once it is warm."),
    replicas: int = typer.Option(
        1,
        "--replicas",
        min=1,
        max=16,
        help="Warm it on this many peers; peers that lack the file pull a copy first.",
    ),
    prefix_file: Path | None = typer.Option(
        None, "--prefix-file", help="Also warm this text: the start of later prompts."
    ),
    system_file: Path | None = typer.Option(
        None, "--system-file", help="Also warm this system prompt, for later chats."
    ),
    addr: str | None = AddrOption,
    home: Path | None = HomeOption,
    json_out: bool = JsonOption,
) -> None:
    """Warm a model ahead of use, and a prompt's beginning (returns at once unless --wait)."""
    with errors_as_exit():
        lease_s = parse_duration(lease)
        prefix, system = _prefix_text(prefix_file, system_file)
        messages = [{"role": "system", "content": system}] if system else None
        with open_client(addr, home) as mesh:
            result = mesh.warm(
                model,
                lease=lease_s,
                wait=wait,
                replicas=replicas,
                prefix=prefix,
                messages=messages,
            )
    short = replicas > 1 and result.copies < replicas
    if json_out:
        print_json(result)
        if short:
            raise typer.Exit(1)
        return
    eta = f", ready in ~{result.ready_in:.1f}s" if result.ready_in else ""
    console.print(
        f"{result.model}: {result.state}{eta} on {result.served_by}; "
        f"warm for {human_until(result.warm_until)}"
    )
    if result.prefix_tokens:
        console.print(f"prefix of {result.prefix_tokens:,} tokens warm in a slot")
    if short:
        console.print(
            f"only {result.copies} of the {replicas} copies asked for: no other peer open to "
            "the mesh has the memory for one (`meshd status` shows each peer's)",
            highlight=False,
        )
        raise typer.Exit(1)
    if replicas > 1:
        console.print(
            f"{replicas} copies warming: `meshd status` shows the peers holding them and any "
            "copy still being pulled"
        )


def _prefix_text(prefix_file: Path | None, system_file: Path | None) -> tuple[str, str]:
    """The text of --prefix-file and --system-file (one of them at most), checked."""
    if prefix_file and system_file:
        raise InvalidRequest("give --prefix-file or --system-file, not both", "prefix")
    path = prefix_file or system_file
    if path is None:
        return "", ""
    text = read_prefix_file(path)
    return (text, "") if prefix_file else ("", text)


MODEL_COLUMNS = (
    Column("model"),
    Column("state"),
    Column("resident", right=True),
    Column("memory", right=True),
    Column("warm for"),
    Column("chat"),
    Column("elsewhere"),
    Column("digest", wide_only=True),
    Column("size", wide_only=True, right=True),
    Column("slots", wide_only=True, right=True),
    Column("quant", wide_only=True),
    Column("runner", wide_only=True),
    Column("last load", wide_only=True),
    Column("gpu", wide_only=True),
    Column("note", wide_only=True),
)


def models(
    addr: str | None = AddrOption,
    home: Path | None = HomeOption,
    json_out: bool = JsonOption,
    wide: bool = WideOption,
    verify: bool = typer.Option(False, "--verify", help="Hash every stored file again first."),
) -> None:
    """List this peer's models, warm or cold, and their memory."""
    if verify:
        _verify_store(home)
    with errors_as_exit(), open_client(addr, home) as mesh:
        listed = mesh.models()
        elsewhere = _elsewhere(mesh.mesh_status())
    if json_out:
        print_json([{**asdict(m), "elsewhere": elsewhere.get(m.name, [])} for m in listed])
        return
    rows = []
    for m in listed:
        others = elsewhere.get(m.name, [])
        warm_others = sum(o.endswith("(warm)") for o in others)
        rows.append(
            [
                m.name,
                _state_cell(m),
                _resident_cell(m),
                human_bytes(m.memory_bytes),
                "pinned" if m.pinned else human_until(m.warm_until),
                _chat_cell(m.chat_template),
                (", ".join(others) if wide else f"{len(others)} ({warm_others} warm)")
                if others
                else "-",
                m.digest[7:19] if m.digest else "(file)",
                human_bytes(m.size_bytes),
                str(m.slots),
                m.quantization or "-",
                _runner_cell(m),
                _load_cell(m),
                _gpu_cell(m),
                m.error,
            ]
        )
    show(console, table(MODEL_COLUMNS, rows, wide), wide)
    for m in listed:
        if _paged_out(m):
            console.print(
                f"{m.name}: loaded, but the OS paged it out ({m.resident_share:.0%} of what it "
                f"reads is in memory): the next request reads it back; `meshd warm {m.name}` "
                "does it now",
                highlight=False,
            )
    if not wide:  # what a narrow table has no room for, one line each
        for m in listed:
            if m.error:
                console.print(f"{m.name}: {m.error}", highlight=False)


def _paged_out(m: ModelInfo) -> bool:
    """Loaded, with too little of what it reads in memory to answer at warm speed."""
    share = m.resident_share
    return m.state == "warm" and share is not None and share < PAGED_OUT_BELOW


def _state_cell(m: ModelInfo) -> str:
    """Its state; a warm model the OS paged out says so."""
    return "paged out" if _paged_out(m) else str(m.state)


def _resident_cell(m: ModelInfo) -> str:
    """The share of its file in memory (mincore), and whether it is locked there."""
    share = m.resident_share
    cell = "-" if share is None else f"{share:.0%}"
    return f"{cell} locked" if m.lock_memory else cell


def _load_cell(m: ModelInfo) -> str:
    """How long its last load took, and whether it read the file from the page cache or disk."""
    if not m.load_seconds:
        return "-"
    if m.load_resident_share < 0:
        source = ""
    elif m.load_resident_share >= PAGED_OUT_BELOW:
        source = ", from page cache"
    else:
        source = f", {1 - m.load_resident_share:.0%} from disk"
    return f"{m.load_seconds:.1f} s{source}"


def _gpu_cell(m: ModelInfo) -> str:
    """Where a loaded model runs: 'all layers' or 'N layers' on the GPU, or 'cpu'."""
    if not m.runner_pid:
        return "-"
    if m.gpu_layers == -1:
        return "all layers"
    return f"{m.gpu_layers} layers" if m.gpu_layers > 0 else "cpu"


def _chat_cell(source: str) -> str:
    """Whether a model chats, and with what: 'gguf', 'gemma', 'file', or 'no'."""
    if not source:
        return "no"
    return source.split(" ", 1)[0] if source.startswith("file ") else source.split(" (")[0]


def _runner_cell(m: ModelInfo) -> str:
    """The runner's pid and resident memory, and how often it was started again."""
    cell = f"pid {m.runner_pid}, {human_bytes(m.runner_rss)}" if m.runner_pid else "-"
    return cell + (f", {m.restarts} restart{'s' * (m.restarts != 1)}" if m.restarts else "")


def _elsewhere(seen: MeshStatus) -> dict[str, list[str]]:
    """Model name -> the other live peers that have it, warm ones marked."""
    found: dict[str, list[str]] = {}
    for peer in seen.peers:
        if peer.local or not peer.alive:
            continue
        for model in peer.info.models:
            mark = " (warm)" if model.state == "warm" else ""
            mark = " (paged out)" if model.paged_out else mark
            found.setdefault(model.name, []).append(peer.info.peer_id + mark)
    return found


def health(
    addr: str | None = AddrOption,
    home: Path | None = HomeOption,
    json_out: bool = JsonOption,
) -> None:
    """Is the daemon serving, and what is warm? Exit 0 when serving, 1 otherwise."""
    with errors_as_exit(), open_client(addr, home, timeout=5.0) as mesh:
        address = mesh.address
        serving = mesh.health()
        listed = mesh.models() if serving else []
    warm_models = [m.name for m in listed if m.state == "warm"]
    if json_out:
        print_json({"address": address, "serving": serving, "warm": warm_models})
    else:
        state = "[green]serving[/]" if serving else "[red]not serving[/]"
        console.print(f"{address}: {state}; warm: {', '.join(warm_models) or 'none'}")
    raise typer.Exit(0 if serving else 1)


def _verify_store(home: Path | None) -> None:
    """Hash every stored model; name the changed ones and exit 1 if there are any."""
    from meshd.errors import InvalidModelFile
    from meshd.store import ModelStore

    with errors_as_exit():
        store = ModelStore(settings_of(home).home)
        models, orphans = store.models(), store.orphans()
    bad = []
    for model in models:
        try:
            store.verify(model.name)
        except InvalidModelFile as error:
            bad.append(str(error))
    for line in bad:
        err_console.print(f"[bold red]error:[/] {line}", highlight=False)
    if orphans:
        size = sum(p.stat().st_size for p in orphans if p.is_file())
        err_console.print(
            f"[yellow]{len(orphans)} file(s) in the store belong to no model "
            f"({human_bytes(size)}): remove them with `meshd gc`[/]",
            highlight=False,
        )
        for path in orphans:
            err_console.print(f"  {path}", highlight=False)
    if bad:
        raise typer.Exit(1)
    err_console.print(f"verified {len(models)} stored model(s)", highlight=False)


PEER_COLUMNS = (
    Column("peer"),
    Column("state"),
    Column("warm"),
    Column("load", right=True),  # active/queued requests
    Column("free mem", right=True),
    Column("rtt", right=True),
    Column("address", wide_only=True),
    Column("seen", wide_only=True),
    Column("cert", wide_only=True),
    Column("version", wide_only=True),
)


def status(
    addr: str | None = AddrOption,
    home: Path | None = HomeOption,
    json_out: bool = JsonOption,
    decisions: int = typer.Option(5, help="How many recent routing decisions to show."),
    addresses: bool = typer.Option(
        False, "--addresses", help="List every address this peer dials, and who named it."
    ),
    wide: bool = WideOption,
) -> None:
    """The mesh as this peer sees it: peers, warm models, load, memory, RTT, last seen."""
    with errors_as_exit(), open_client(addr, home, timeout=5.0) as mesh:
        seen = mesh.mesh_status()
    http = None if addr else running_daemon_http(settings_of(home).home)
    if json_out:
        print_json({**dataclasses.asdict(seen), "http": http})
        return
    versions = sorted({p.info.version for p in seen.peers})
    title = f"mesh {seen.mesh_id} · meshd {', '.join(versions)}"
    rows, notes = [], []
    for peer in seen.peers:
        info = peer.info
        warm_models = [m.name for m in info.models if m.state == "warm"]
        active, queued = sum(m.active for m in info.models), sum(m.queued for m in info.models)
        state = "this peer" if peer.local else ("[green]live[/]" if peer.alive else "[red]down[/]")
        if info.paused:
            state += " [yellow]paused[/]"
            notes.append(f"{info.peer_id}: {info.paused}")
        elif info.yielding:
            state += " [yellow]yielding[/]"
            notes.append(f"{info.peer_id} yields: {info.yielding}")
        rows.append(
            [
                info.peer_id + (" (CA)" if info.ca_holder else ""),
                state,
                ", ".join(warm_models) or "-",
                f"{active}/{queued}",
                human_bytes(info.memory_free),
                "-" if peer.local else f"{1000 * peer.rtt:.1f} ms",
                info.address,
                "now" if peer.local else human_ago(peer.last_seen),
                human_until(info.certificate_expires) if info.certificate_expires else "none",
                info.version,
            ]
        )
    show(console, table(PEER_COLUMNS, rows, wide, title), wide)
    for note in notes:
        console.print(note, highlight=False)
    use = seen.replicas
    if use.max_models:
        console.print(
            f"this peer holds {use.held} of {use.max_models} replicas for the mesh "
            f"({human_bytes(use.bytes)} of {human_bytes(use.max_bytes)}); apps and other peers "
            f"lease models here for {human_duration(use.lease_cap)} at most",
            highlight=False,
        )
    for peer in seen.peers:
        for pull in peer.info.pulls:
            total = pull.total_bytes
            share = f"{100 * pull.done_bytes / total:.0f}% of " if total else ""
            console.print(
                f"{peer.info.peer_id} is pulling a replica of {pull.model} from {pull.source}: "
                f"{share}{human_bytes(pull.total_bytes or pull.done_bytes)}",
                highlight=False,
            )
    for record in list(seen.recent)[-decisions:]:
        console.print(
            f"[dim]{human_ago(record.at)}: {record.model} → {record.peer_id}: {record.reason}[/]",
            highlight=False,
        )
    if http:
        console.print(f"HTTP (OpenAI-compatible): {http}/v1 · chat page: {http}/", highlight=False)
    _print_dialling(seen, every=addresses)


def open_page(
    home: Path | None = HomeOption,
    model: str | None = typer.Option(None, "--model", "-m", help="The model to warm and ask."),
    print_only: bool = typer.Option(False, "--print", help="Print the address; open nothing."),
) -> None:
    """Open the chat page of this machine's daemon (it warms the model as it opens)."""
    import urllib.parse

    with errors_as_exit():
        base = running_http(home)
    url = base + "/" + (f"?{urllib.parse.urlencode({'model': model})}" if model else "")
    console.print(url, highlight=False, soft_wrap=True)
    if not print_only:
        import webbrowser

        webbrowser.open(url)


def _print_dialling(seen: MeshStatus, every: bool) -> None:
    """A line on the addresses this peer dials (a table of them with every=True)."""
    failing = [a for a in seen.addresses if a.failures]
    console.print(
        f"[dim]dialling {len(seen.addresses)} address(es), {len(failing)} backing off; "
        f"{seen.dials} dials since start[/]",
        highlight=False,
    )
    if not every:
        return
    rows = []
    for a in seen.addresses:
        next_dial = f"in {a.next_dial_in:.0f} s" if a.next_dial_in >= 1 else "now"
        answered = "yes" if a.answered else "never"
        rows.append([a.address, a.teller, answered, str(a.dials), str(a.failures), next_dial])
    show(console, table(ADDRESS_COLUMNS, rows, wide=True), wide=True)


ADDRESS_COLUMNS = (
    Column("address"),
    Column("named by"),
    Column("answered"),
    Column("dials", right=True),
    Column("failing", right=True),
    Column("next dial"),
)
