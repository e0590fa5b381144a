"""meshd/macchecks.py: every Mac check on what macOS really prints, plus the service definition
check on rendered definitions (old and current)."""

from __future__ import annotations

import dataclasses
import plistlib
from pathlib import Path

import pytest

from meshd import macchecks, service
from meshd.macchecks import MacState, mac_checks, protected_paths
from meshd.types import ModelInfo, ModelState

PMSET_MINI = """System-wide power settings:
Currently in use:
 standby              0
 autorestart          1
 womp                 1
 sleep                0
"""
MINI = MacState(
    machine="arm64",
    translated=False,
    pmset=PMSET_MINI,
    filevault="FileVault is Off.",
    firewall_state="Firewall is disabled. (State = 0)",
    firewall_block_all="Firewall has block all state set to disabled.",
    firewall_app="",
)


def _model(name: str, gpu_layers: int, state: ModelState = ModelState.WARM) -> ModelInfo:
    return ModelInfo(
        name=name,
        path=f"/m/{name}.gguf",
        size_bytes=1,
        state=state,
        pinned=False,
        slots=1,
        memory_bytes=1,
        last_used=0.0,
        warm_until=0.0,
        gpu_layers=gpu_layers,
    )


def _outcomes(mac: MacState | None, **kwargs: object) -> dict[str, str]:
    found = kwargs.get("found")
    checks = mac_checks(
        mac,
        kwargs.get("models", []),  # type: ignore[arg-type]
        kwargs.get("paths", []),  # type: ignore[arg-type]
        found,  # type: ignore[arg-type]
        10.0,
    )
    return {c.name: c.outcome for c in checks}


def test_a_well_set_up_mini_passes() -> None:
    outcomes = _outcomes(MINI, models=[_model("gemma", -1)])
    assert outcomes == {
        "native Python": "ok",
        "GPU (Metal)": "ok",
        "folders launchd can read": "ok",
        "Application Firewall": "ok",
        "Local Network privacy": "warn",  # no service yet: from a terminal macOS asks once
        "restart after a power cut": "ok",
        "FileVault": "ok",
        "service definition": "skip",
    }


def test_off_macos_every_mac_check_skips() -> None:
    outcomes = _outcomes(None)
    assert set(outcomes.values()) == {"skip"}


def test_rosetta_and_a_model_on_the_cpu_are_named() -> None:
    rosetta = dataclasses.replace(MINI, machine="x86_64", translated=True)
    assert macchecks.rosetta(rosetta).outcome == "fail"
    assert "arm64 Python" in macchecks.rosetta(rosetta).fix
    check = macchecks.gpu_offload(MINI, [_model("a", -1), _model("b", 0)])
    assert check.outcome == "warn" and check.detail == "on the CPU: b"
    cold = macchecks.gpu_offload(MINI, [_model("b", 0, ModelState.COLD)])
    assert cold.outcome == "skip", "a cold model has no runner to ask"
    assert macchecks.gpu_offload(MINI, None).outcome == "skip"


def test_folders_launchd_may_not_read() -> None:
    home = Path("/Users/ann")
    paths = [
        Path("/Users/ann/Library/Application Support/meshd"),
        Path("/Users/ann/Documents/venvs/meshd"),
        Path("/Volumes/Models/qwen.gguf"),
        Path("/Users/ann/Downloads"),
        Path("/Users/ann/Documentsandmore/x"),  # not inside Documents
    ]
    assert protected_paths(paths, home) == paths[1:4]
    installed = macchecks.launchd_paths(MINI, paths, home, "launch-daemon")
    assert installed.outcome == "fail" and "Operation not permitted" in installed.detail
    assert macchecks.launchd_paths(MINI, paths, home, None).outcome == "warn"


@pytest.mark.parametrize(
    ("state", "block_all", "app", "outcome"),
    [
        ("Firewall is disabled. (State = 0)", "", "", "ok"),
        ("Firewall is enabled. (State = 1)", "Block all DISABLED! ", "", "warn"),
        (
            "Firewall is enabled. (State = 1)",
            "Firewall has block all state set to disabled.",
            "The application /opt/py/bin/python3.12 is permitted to accept incoming connections",
            "ok",
        ),
        (
            "Firewall is enabled. (State = 1)",
            "Firewall has block all state set to disabled.",
            "The application /opt/py/bin/python3.12 is blocked from accepting incoming connections",
            "fail",
        ),
        ("Firewall is enabled. (State = 1)", "Block all ENABLED! ", "", "fail"),
        (
            "Firewall is blocking all non-essential incoming connections. (State = 2)",
            "",
            "",
            "fail",
        ),
        ("", "", "", "skip"),
    ],
)
def test_the_application_firewall(state: str, block_all: str, app: str, outcome: str) -> None:
    mac = dataclasses.replace(
        MINI, firewall_state=state, firewall_block_all=block_all, firewall_app=app
    )
    check = macchecks.firewall(mac)
    assert check.outcome == outcome, check
    if outcome == "warn":
        assert "--unblockapp" in check.fix


def test_power_filevault_and_local_network() -> None:
    off = dataclasses.replace(
        MINI, pmset=PMSET_MINI.replace("autorestart          1", "autorestart          0")
    )
    assert macchecks.power_restart(off).outcome == "warn"
    laptop = dataclasses.replace(MINI, pmset="sleep 1\n")
    assert macchecks.power_restart(laptop).outcome == "skip"
    locked = dataclasses.replace(MINI, filevault="FileVault is On.")
    check = macchecks.filevault(locked)
    assert check.outcome == "warn" and "authrestart" in check.fix
    assert macchecks.local_network(MINI, "launch-daemon").outcome == "ok"
    agent = macchecks.local_network(MINI, "launch-agent")
    assert agent.outcome == "warn" and "--at-boot" in agent.fix


def test_an_old_service_definition_is_named_for_reinstall(tmp_path: Path) -> None:
    """Definitions written before ProcessType Interactive and ExitTimeOut: throttled, and
    killed 5 s after SIGTERM, mid-drain."""
    current = service.render_plist(tmp_path, "/opt/py/bin/python3", "/usr/bin", "ann", "staff")
    old = plistlib.loads(current)
    old["ProcessType"] = "Standard"
    del old["ExitTimeOut"]
    path = tmp_path / "com.meshd.daemon.plist"
    found = service.ServiceFile(path, current, "launch-daemon", True, service.DAEMON_LABEL)
    path.write_bytes(current)
    assert macchecks.service_definition(found, 10.0).outcome == "ok"
    assert macchecks.service_definition(found, 120.0).outcome == "warn", "a longer drain"
    path.write_bytes(plistlib.dumps(old))
    check = macchecks.service_definition(found, 10.0)
    assert check.outcome == "warn"
    assert "ProcessType Standard" in check.detail and "killed 5 s after" in check.detail
    unit = tmp_path / "meshd.service"
    unit.write_bytes(service.render_unit(tmp_path, "/usr/bin/python3"))
    systemd = service.ServiceFile(unit, b"", "systemd-user", False)
    assert macchecks.service_definition(systemd, 10.0).outcome == "ok"
    unit.write_text(unit.read_text().replace("TimeoutStopSec=30", "TimeoutStopSec=5"))
    assert macchecks.service_definition(systemd, 10.0).outcome == "warn"
