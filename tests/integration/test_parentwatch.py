"""meshd/runner/parentwatch.py with real processes: a runner-like child outlives a SIGKILLed
parent by no more than the watch takes, with each watch this machine has."""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import textwrap

import pytest

from meshd.runner.parentwatch import watch_kind

# The "daemon": starts a child that watches it and then computes forever, says the child's
# pid, and waits to be killed. The pipe's write end is held by both; EOF means both are gone.
DAEMON = textwrap.dedent(
    """
    import os, subprocess, sys, time
    fd = int(sys.argv[1])
    child = subprocess.Popen(
        [sys.executable, "-c", sys.argv[2], str(os.getpid()), sys.argv[3]], pass_fds=[fd]
    )
    print(child.pid, flush=True)
    time.sleep(600)
    """
)
CHILD = textwrap.dedent(
    """
    import sys
    from meshd.runner.parentwatch import die_with_parent
    die_with_parent(int(sys.argv[1]), sys.argv[2])
    print("watching", flush=True)
    while True:  # a decode that never looks at its socket
        sum(range(10_000))
    """
)


def test_each_platform_has_its_watch() -> None:
    assert watch_kind("linux", kqueue=False) == "prctl"
    assert watch_kind("darwin", kqueue=True) == "kqueue"
    assert watch_kind("sunos5", kqueue=False) == "poll"


KINDS = ["poll", watch_kind()] + (["kqueue"] if hasattr(select, "kqueue") else [])


@pytest.mark.parametrize("kind", sorted(set(KINDS)))
def test_a_busy_child_dies_with_its_killed_parent(kind: str) -> None:
    read, write = os.pipe()
    daemon = subprocess.Popen(
        [sys.executable, "-c", DAEMON, str(write), CHILD, kind],
        pass_fds=[write],
        stdout=subprocess.PIPE,
        text=True,
    )
    os.close(write)
    try:
        assert daemon.stdout is not None
        child = int(daemon.stdout.readline())
        os.kill(daemon.pid, signal.SIGKILL)
        daemon.wait(timeout=60)
        # Every holder of the write end is gone when read() returns b"" (no timing window: a
        # child that never dies fails by the suite's timeout).
        assert os.read(read, 1) == b"", f"child {child} still holds the pipe"
    finally:
        os.close(read)
        if daemon.poll() is None:
            daemon.kill()
