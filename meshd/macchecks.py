"""`meshd doctor`'s checks for a Mac: where the models run (GPU or CPU), Rosetta, folders launchd
may not read, the Application Firewall, restart after a power cut, FileVault, Local Network
privacy, and whether the installed service runs at full speed and may drain.

What the Mac says is read once into `MacState` (`read_mac_state`, the only code here that runs
commands); every check is a pure function of it, tested on sample outputs.
"""

from __future__ import annotations

import os
import platform
import plistlib
import re
import subprocess
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from meshd import service
from meshd.checks import NOT_MAC, Check
from meshd.types import ModelInfo, ModelState

FIREWALL = "/usr/libexec/ApplicationFirewall/socketfilterfw"
# Folders macOS guards with TCC: a launchd job reads them only with Full Disk Access, and fails
# with "Operation not permitted" where a Terminal that was once allowed succeeds.
PROTECTED = ("Desktop", "Documents", "Downloads", "Library/Mobile Documents")


@dataclass(frozen=True)
class MacState:
    """What the Mac says, as the commands print it ("" where a command gave nothing)."""

    machine: str  # platform.machine() of this Python: arm64, or x86_64 (Intel, or Rosetta)
    translated: bool  # this Python runs under Rosetta
    pmset: str  # pmset -g
    filevault: str  # fdesetup status
    firewall_state: str  # socketfilterfw --getglobalstate
    firewall_block_all: str  # socketfilterfw --getblockall
    firewall_app: str  # socketfilterfw --getappblocked <python>


def _output(args: list[str]) -> str:
    try:
        done = subprocess.run(args, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return (done.stdout + done.stderr).strip()


def read_mac_state(platform_name: str = sys.platform) -> MacState | None:
    """Ask the Mac (a few short commands); None elsewhere."""
    if platform_name != "darwin":
        return None
    from meshd.macos import under_rosetta

    python = os.path.realpath(sys.executable)
    return MacState(
        machine=platform.machine(),
        translated=under_rosetta(),
        pmset=_output(["pmset", "-g"]),
        filevault=_output(["fdesetup", "status"]),
        firewall_state=_output([FIREWALL, "--getglobalstate"]),
        firewall_block_all=_output([FIREWALL, "--getblockall"]),
        firewall_app=_output([FIREWALL, "--getappblocked", python]),
    )


def gpu_offload(mac: MacState | None, models: list[ModelInfo] | None) -> Check:
    name = "GPU (Metal)"
    if mac is None:
        return Check(name, "skip", NOT_MAC)
    if models is None:
        return Check(name, "skip", "the daemon does not answer")
    loaded = [m for m in models if m.state == ModelState.WARM]
    if not loaded:
        return Check(name, "skip", "no model is loaded (`meshd warm NAME`, then ask again)")
    on_cpu = [m.name for m in loaded if m.gpu_layers == 0]
    if on_cpu:
        fix = (
            'set gpu_layers = "auto" in meshd.toml; if it is, this llama.cpp has no Metal: '
            "reinstall meshd with an arm64 Python"
        )
        return Check(name, "warn", f"on the CPU: {', '.join(on_cpu)}", fix)
    return Check(name, "ok", f"{len(loaded)} loaded model(s) run on the GPU")


def rosetta(mac: MacState | None) -> Check:
    name = "native Python"
    if mac is None:
        return Check(name, "skip", NOT_MAC)
    if mac.translated:
        fix = (
            "install an arm64 Python (python.org's universal2, or Homebrew's in /opt/homebrew), "
            "then set meshd up again with it"
        )
        detail = "this Python is x86_64 under Rosetta: llama.cpp runs without Metal or ARM kernels"
        return Check(name, "fail", detail, fix)
    return Check(name, "ok", f"{mac.machine}")


def protected_paths(paths: Iterable[Path], user_home: Path) -> list[Path]:
    """The paths inside a folder launchd jobs may not read: Desktop, Documents, Downloads,
    iCloud Drive, or a volume under /Volumes (external and network disks)."""
    guarded = [user_home / folder for folder in PROTECTED] + [Path("/Volumes")]
    return [p for p in paths if any(p == g or g in p.parents for g in guarded)]


def launchd_paths(
    mac: MacState | None, paths: Iterable[Path], user_home: Path, installed: str | None
) -> Check:
    name = "folders launchd can read"
    if mac is None:
        return Check(name, "skip", NOT_MAC)
    found = protected_paths(paths, user_home)
    if not found:
        return Check(name, "ok", "home, Python and models are outside protected folders")
    shown = ", ".join(str(p) for p in found[:2]) + (" …" if len(found) > 2 else "")
    fix = (
        "move them under ~/Library/Application Support or /opt (or give python Full Disk "
        "Access), then `meshd service install` again"
    )
    detail = f"a service gets 'Operation not permitted' on {shown}"
    return Check(name, "fail" if installed else "warn", detail, fix)


def _says_on(text: str) -> bool:
    """socketfilterfw's wording differs between macOS versions ("Block all ENABLED!", "Firewall
    has block all state set to enabled."); "disabled" anywhere means off."""
    lowered = text.lower()
    return "disabled" not in lowered and ("enabled" in lowered or "state = 2" in lowered)


def firewall(mac: MacState | None) -> Check:
    name = "Application Firewall"
    if mac is None:
        return Check(name, "skip", NOT_MAC)
    if not mac.firewall_state:
        return Check(name, "skip", "socketfilterfw did not answer")
    if "state = 0" in mac.firewall_state.lower() or "disabled" in mac.firewall_state.lower():
        return Check(name, "ok", "off: nothing blocks incoming connections")
    if "state = 2" in mac.firewall_state.lower() or _says_on(mac.firewall_block_all):
        fix = "System Settings → Network → Firewall → Options: turn off Block all incoming"
        detail = "blocks all incoming connections: peers cannot reach this Mac"
        return Check(name, "fail", detail, fix)
    python = os.path.realpath(sys.executable)
    allow = f"sudo {FIREWALL} --add {python} && sudo {FIREWALL} --unblockapp {python}"
    app = mac.firewall_app.lower()
    if "permitted" in app:
        return Check(name, "ok", "on, and python may accept connections")
    if "blocked" in app:
        return Check(name, "fail", "on, and blocks python: peers cannot reach this Mac", allow)
    fix = f"a service cannot answer the firewall's prompt: allow python once: {allow}"
    return Check(name, "warn", "on; python is not yet allowed to accept connections", fix)


def power_restart(mac: MacState | None) -> Check:
    name = "restart after a power cut"
    if mac is None:
        return Check(name, "skip", NOT_MAC)
    found = re.search(r"^\s*autorestart\s+(\d+)", mac.pmset, re.MULTILINE)
    if found is None:
        return Check(name, "skip", "this Mac has no such setting (a laptop)")
    if found.group(1) == "0":
        fix = "System Settings → Energy: Start up automatically after a power failure"
        return Check(name, "warn", "off: after a power cut this Mac stays off", fix)
    return Check(name, "ok", "on")


def filevault(mac: MacState | None) -> Check:
    name = "FileVault"
    if mac is None:
        return Check(name, "skip", NOT_MAC)
    if "filevault is on" in mac.filevault.lower():
        fix = (
            "for a planned restart, `sudo fdesetup authrestart` unlocks once; after a power "
            "cut, someone types the password (or turn FileVault off on a Mac that stays home)"
        )
        detail = "on: after a restart the disk stays locked, and meshd off, until a login"
        return Check(name, "warn", detail, fix)
    if "filevault is off" in mac.filevault.lower():
        return Check(name, "ok", "off: meshd is back after a restart with nobody logged in")
    return Check(name, "skip", "fdesetup did not answer")


def local_network(mac: MacState | None, installed: str | None) -> Check:
    name = "Local Network privacy"
    if mac is None:
        return Check(name, "skip", NOT_MAC)
    if installed == "launch-daemon":
        return Check(name, "ok", "meshd runs as a LaunchDaemon, which macOS does not block")
    fix = "`meshd service install --at-boot` (a LaunchDaemon is exempt)"
    if installed == "launch-agent":
        detail = "a LaunchAgent's python may be kept off the LAN without a prompt (macOS 15+)"
        return Check(name, "warn", detail, fix)
    detail = "from a terminal macOS asks once; a denial hides the LAN"
    return Check(name, "warn", detail, "allow it in System Settings → Privacy & Security → " + fix)


def service_definition(found: service.ServiceFile | None, drain_seconds: float) -> Check:
    """The installed service runs at full speed and may drain (launchd: ProcessType and
    ExitTimeOut; systemd: TimeoutStopSec); an older definition is named for reinstalling."""
    name = "service definition"
    if found is None:
        return Check(name, "skip", "no service installed")
    try:
        text = found.path.read_bytes()
    except OSError as error:
        return Check(name, "warn", f"cannot read {found.path}: {error.strerror}")
    problems = []
    needed = service.exit_timeout(drain_seconds)
    if found.kind.startswith("launch-"):
        try:
            plist = plistlib.loads(text)
        except Exception:
            plist = {}
        if plist.get("ProcessType") != "Interactive":
            problems.append(f"ProcessType {plist.get('ProcessType', 'Standard')} (throttled)")
        if int(plist.get("ExitTimeOut") or 0) < needed:
            problems.append(f"killed {plist.get('ExitTimeOut', 5)} s after SIGTERM")
    else:
        stop = re.search(rb"^TimeoutStopSec=(\d+)", text, re.MULTILINE)
        if stop is None or int(stop.group(1)) < needed:
            problems.append("killed before its drain ends")
    if problems:
        fix = "`meshd service install` again (it writes the current definition)"
        return Check(name, "warn", "; ".join(problems), fix)
    return Check(name, "ok", f"full speed, {needed} s to drain")


def mac_checks(
    mac: MacState | None,
    models: list[ModelInfo] | None,
    paths: Iterable[Path],
    found: service.ServiceFile | None,
    drain_seconds: float,
) -> list[Check]:
    """Every Mac check, in the order a person would fix them; the service definition check
    applies everywhere."""
    kind = found.kind if found else None
    user_home = service.service_user().home
    return [
        rosetta(mac),
        gpu_offload(mac, models),
        launchd_paths(mac, paths, user_home, kind),
        firewall(mac),
        local_network(mac, kind),
        power_restart(mac),
        filevault(mac),
        service_definition(found, drain_seconds),
    ]
