"""How many files this process may open: raised at start as far as the hard limit allows.

macOS gives a LaunchAgent a soft limit of 256, which a few hundred idle connections, runner
pipes and model files can reach; the service templates raise it too (launchd, systemd).
"""

from __future__ import annotations

import contextlib
import resource
import sys

MACOS_OPEN_MAX = 10240  # macOS refuses a soft limit above OPEN_MAX, whatever the hard limit


def open_file_limit() -> int:
    """The soft limit on open files now."""
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def raise_open_file_limit() -> int:
    """Raise the soft limit on open files to the hard limit (capped where the OS caps it);
    returns the soft limit in force afterwards. Never lowers it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard
    if sys.platform == "darwin" and (hard == resource.RLIM_INFINITY or hard > MACOS_OPEN_MAX):
        target = MACOS_OPEN_MAX
    unlimited = resource.RLIM_INFINITY
    if soft == unlimited or (target != unlimited and target <= soft):
        return soft
    with contextlib.suppress(ValueError, OSError):  # the OS said no: keep what we have
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return open_file_limit()


def connection_cap(wanted: int, open_files: int) -> int:
    """Concurrent TCP connections to allow: what the settings want, but at most half the open
    files, so that connections can never take the descriptors that models and the CLI need."""
    return max(1, min(wanted, open_files // 2))
