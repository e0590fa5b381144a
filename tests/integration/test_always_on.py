"""Always on, on a real daemon: its log rotates under the cap and `meshd logs` reads it; the
keep-awake helper lives exactly as long as the daemon (or the daemon says why it cannot)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import psutil
from helpers import eventually, meshd

from meshd.client import MeshClient
from meshd.logfile import log_files, log_path
from meshd.process import DaemonProcess

CAP = 16 * 1024


def test_the_log_rotates_under_its_cap_and_meshd_logs_reads_it(
    tmp_path: Path, tiny_model: Path
) -> None:
    env = {"MESHD_LOG_MAX_BYTES": str(CAP), "MESHD_LOG_BACKUPS": "2", "MESHD_KEEP_AWAKE": "never"}
    home = tmp_path / "home"
    with DaemonProcess(
        home,
        [f"tiny={tiny_model}"],
        env=env,
        extra_args=["--log-level", "debug", "--log-to", "file"],
    ) as daemon:
        follower = subprocess.Popen(
            [sys.executable, "-m", "meshd.cli", "logs", "-f", "-n", "0", "--home", str(home)],
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            with MeshClient(daemon.socket) as mesh:
                rotations = log_path(home).with_name("meshd.log.2")
                for _ in range(2000):  # until it has rotated at least twice
                    if rotations.exists():
                        break
                    mesh.complete("tiny", "Hello", max_tokens=2)
                    mesh.warm("tiny", lease=60)
                    mesh.status()
                # Written after the follower started: a line it must show.
                mesh.complete("tiny", "Hello", max_tokens=2)
            assert rotations.exists()
            assert follower.stdout is not None
            followed = follower.stdout.readline()
        finally:
            follower.terminate()
            follower.wait(10)
        assert followed.strip(), "logs -f printed a line written after it started"
        files = log_files(home)
        assert [p.name for p in files] == ["meshd.log.2", "meshd.log.1", "meshd.log"]
        assert all(p.stat().st_size <= CAP + 2048 for p in files)
        printed = daemon.log_path.read_text()  # what the daemon wrote to stdout and stderr
        assert " DEBUG " not in printed and " INFO " not in printed, "--log-to file: no log"
    shown = meshd("logs", "-n", "3", home=home)
    assert shown.returncode == 0 and len(shown.stdout.splitlines()) == 3
    assert shown.stdout.splitlines()[-1] == log_path(home).read_text().splitlines()[-1]
    nothing = meshd("logs", home=tmp_path / "elsewhere")
    assert nothing.returncode == 1 and "no log" in nothing.stderr


def _helpers_of(pid: int) -> list[psutil.Process]:
    found = []
    for process in psutil.process_iter(["cmdline"]):
        cmdline = process.info["cmdline"] or []
        if f"--pid={pid}" in cmdline or (cmdline[:1] == ["caffeinate"] and str(pid) in cmdline):
            found.append(process)
    return found


def test_keep_awake_lives_as_long_as_the_daemon(tmp_path: Path, tiny_model: Path) -> None:
    home = tmp_path / "home"
    with DaemonProcess(home, [f"tiny={tiny_model}"], env={"MESHD_KEEP_AWAKE": "always"}) as daemon:
        assert daemon.proc is not None
        pid = daemon.proc.pid
        deadline = time.monotonic() + 60
        held = refused = False
        while time.monotonic() < deadline and not (held or refused):
            text = log_path(home).read_text()
            held = "keeping this machine from idle sleep" in text
            refused = "cannot keep this machine awake" in text
            time.sleep(0.1)
        assert held or refused, "it holds the machine awake, or says why it cannot"
        doctor = meshd("doctor", "--json", home=home)
        kept = [c for c in json.loads(doctor.stdout) if c["name"] == "kept awake"]
        assert kept and kept[0]["outcome"] == ("ok" if held else "warn")
    eventually(lambda: _helpers_of(pid) == [], timeout=30)  # nothing keeps the machine awake after
