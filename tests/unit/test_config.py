"""Settings: the TOML file, then MESHD_* variables, then flags; bad values are one clear error."""

from __future__ import annotations

from pathlib import Path

import pytest

from meshd.config import load_settings, parse_duration, parse_listen, parse_size
from meshd.errors import ConfigError, InvalidRequest


def test_defaults_without_any_source(tmp_path: Path) -> None:
    settings = load_settings(tmp_path, environ={})
    assert settings.home == tmp_path.resolve()
    assert settings.listen == "0.0.0.0:7070"  # every interface, served only with mutual TLS
    assert settings.slots == 4 and settings.keep_alive == 1800 and settings.models == ()


def test_file_then_environment_then_flags(tmp_path: Path) -> None:
    (tmp_path / "meshd.toml").write_text(
        'listen = "0.0.0.0:7000"\nslots = 2\nkeep_alive = "10m"\n'
        '[models]\na = "models/a.gguf"\nb = "/abs/b.gguf"\n'
    )
    env = {"MESHD_SLOTS": "3", "MESHD_MODELS": "c=/c.gguf", "MESHD_UNRELATED": "x"}
    settings = load_settings(
        tmp_path, {"listen": "127.0.0.1:0", "models": ["a=/flag/a.gguf"]}, environ=env
    )
    assert settings.listen == "127.0.0.1:0"  # flag beats file
    assert settings.slots == 3  # environment beats file
    assert settings.keep_alive == 600  # file beats default
    assert settings.model_paths() == {
        "a": Path("/flag/a.gguf"),
        "b": Path("/abs/b.gguf"),
        "c": Path("/c.gguf"),
    }


def test_relative_model_paths_in_the_file_are_from_the_home(tmp_path: Path) -> None:
    (tmp_path / "meshd.toml").write_text('[models]\na = "models/a.gguf"\n')
    settings = load_settings(tmp_path, environ={})
    assert settings.model_paths()["a"] == tmp_path.resolve() / "models" / "a.gguf"


def test_home_comes_from_the_environment(tmp_path: Path) -> None:
    assert load_settings(None, environ={"MESHD_HOME": str(tmp_path)}).home == tmp_path.resolve()


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ({"slots": "many"}, "slots: not a whole number"),
        ({"keep_alive": "forever"}, "not a duration"),
        ({"memory_budget": "lots"}, "not a size"),
        ({"listen": "7070"}, "not a host:port"),
        ({"models": ["../x"]}, "NAME=PATH"),
        ({"models": ["bad name=/x.gguf"]}, "bad model name"),
        ({"colour": "blue"}, "unknown setting 'colour'"),
        ({"slots": 0}, "slots must be"),
    ],
)
def test_bad_values_are_one_clear_error(tmp_path: Path, source: dict, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(tmp_path, source, environ={})
    assert message in str(caught.value)


def test_broken_toml_names_the_file(tmp_path: Path) -> None:
    (tmp_path / "meshd.toml").write_text("slots = [unclosed\n")
    with pytest.raises(ConfigError, match=r"meshd\.toml"):
        load_settings(tmp_path, environ={})


def test_units() -> None:
    assert parse_duration("500ms") == 0.5 and parse_duration("5m") == 300
    assert parse_duration(90) == 90 and parse_duration("1.5h") == 5400
    assert parse_size("512MiB") == 512 * 2**20 and parse_size("8G") == 8 * 2**30
    assert parse_size(1024) == 1024 and parse_size("1.5k") == 1536
    assert parse_listen("[::1]:7070") == "[::1]:7070"
    with pytest.raises(ConfigError):
        parse_duration("-5s")


def test_machine_defaults_are_filled_in_once_and_kept_when_set(tmp_path: Path) -> None:
    import psutil

    settings = load_settings(tmp_path, environ={})
    assert settings.memory_budget == psutil.virtual_memory().total * 3 // 4
    assert settings.threads == (psutil.cpu_count(logical=False) or psutil.cpu_count())
    chosen = load_settings(tmp_path, {"memory_budget": "1GiB", "threads": 3}, environ={})
    assert (chosen.memory_budget, chosen.threads) == (2**30, 3)


def test_auto_replicas_from_the_file_or_a_flag(tmp_path: Path) -> None:
    (tmp_path / "meshd.toml").write_text("[auto_replicas]\ngemma = 2\nqwen = 3\n")
    assert load_settings(tmp_path).auto_replicas == (("gemma", 2), ("qwen", 3))
    flags = {"auto_replicas": "tiny=2"}
    assert load_settings(tmp_path, flags=flags).auto_replicas == (("tiny", 2),)
    for bad, message in (
        ("tiny=x", "whole number"),
        ("../x=2", "bad model name"),
        ("t=99", "at most"),
    ):
        with pytest.raises(ConfigError, match=message):
            load_settings(tmp_path, flags={"auto_replicas": bad})


def test_pinned_prefixes_from_text_or_a_file_in_the_home(tmp_path: Path) -> None:
    (tmp_path / "team.txt").write_text("You are the team's assistant.")
    (tmp_path / "meshd.toml").write_text(
        '[prefixes.team]\nmodel = "gemma"\nfile = "team.txt"\n'
        '[prefixes.short]\nmodel = "gemma"\ntext = "Be brief."\n'
    )
    pins = load_settings(tmp_path, environ={}).prefixes
    assert [(p.name, p.model, p.text) for p in pins] == [
        ("team", "gemma", "You are the team's assistant."),
        ("short", "gemma", "Be brief."),
    ]
    for body, message in (
        ('[prefixes.x]\nmodel = "gemma"\n', "give text"),
        ('[prefixes.x]\nmodel = "gemma"\ntext = "a"\nfile = "b"\n', "give text"),
        ('[prefixes.x]\ntext = "a"\n', "needs model"),
        ('[prefixes.x]\nmodel = "gemma"\nfile = "missing.txt"\n', "cannot read"),
        ('[prefixes.x]\nmodel = "gemma"\ntext = "  "\n', "empty"),
        ('prefixes = "nope"\n', "a table"),
    ):
        (tmp_path / "meshd.toml").write_text(body)
        with pytest.raises(ConfigError, match=message):
            load_settings(tmp_path, environ={})


@pytest.mark.parametrize("name", ["tiny\n", "tiny\r\n", "ok\nthen"])
def test_a_name_is_matched_whole(name: str) -> None:
    """A trailing newline is no part of a valid name ('$' would have let it through)."""
    from meshd.store import parse_name

    with pytest.raises(InvalidRequest):
        parse_name(name)
    with pytest.raises(ConfigError):
        load_settings(Path("/nonexistent-home"), {"models": ["ok\nthen=/m.gguf"]}, environ={})


@pytest.mark.parametrize(
    ("platform", "machine", "total", "physical", "performance", "budget", "threads"),
    [
        ("linux", "x86_64", 24 * 2**30, 2, None, 18 * 2**30, 2),  # this machine
        ("darwin", "arm64", 16 * 2**30, 10, 4, 16 * 2**30 * 2 // 3, 4),  # an M4 mini
        ("darwin", "arm64", 64 * 2**30, 12, 8, 48 * 2**30, 8),  # Metal allows 3/4 here
        ("darwin", "x86_64", 16 * 2**30, 4, None, 12 * 2**30, 4),  # an Intel Mac: no Metal cap
        ("linux", "aarch64", 8 * 2**30, None, None, 6 * 2**30, 1),  # cores unknown: one thread
    ],
)
def test_machine_defaults(
    platform: str,
    machine: str,
    total: int,
    physical: int | None,
    performance: int | None,
    budget: int,
    threads: int,
) -> None:
    """A quarter of RAM stays free, within Metal's working set on Apple Silicon; a thread per
    performance core where the machine says, else per physical core."""
    from meshd.config import machine_defaults

    got = machine_defaults(platform, machine, total, physical, performance)
    assert got[1] == threads and abs(got[0] - budget) <= 1


def test_lock_memory_is_global_and_per_model(tmp_path: Path) -> None:
    (tmp_path / "meshd.toml").write_text(
        'lock_memory = true\n[models]\na = "/a.gguf"\n'
        '[models.b]\nfile = "/b.gguf"\nlock_memory = false\n'
    )
    settings = load_settings(tmp_path, environ={})
    assert settings.lock_memory
    by_name = {spec.name: spec.lock_memory for spec in settings.models}
    assert by_name == {"a": None, "b": False}  # None: the global setting
    (tmp_path / "meshd.toml").write_text('[models.b]\nfile = "/b.gguf"\nlock_memory = "yes"\n')
    with pytest.raises(ConfigError, match="b: lock_memory must be true or false"):
        load_settings(tmp_path, environ={})
