"""macOS Local Network privacy (macOS 15 and later): a LaunchAgent whose program is not an app
(meshd's python) can be kept off the LAN without a prompt; its dials fail with "No route to
host" while loopback and the internet work. A LaunchDaemon is exempt. When that is what a
failed dial looks like, the daemon says the fix once, where the owner will look: its log."""

from __future__ import annotations

import logging
import os
import sys

log = logging.getLogger("meshd.lanblock")
SERVICE_ENV = "MESHD_SERVICE"  # set by each service definition (meshd.service renders them)
FIX = (
    "dials to peers on the LAN fail with 'no route to host' and meshd runs as a login service "
    "(LaunchAgent): macOS Local Network privacy may be blocking it. Fix: `meshd service install "
    "--at-boot` (a LaunchDaemon is exempt), or allow python under System Settings → Privacy & "
    "Security → Local Network"
)


class LanBlockHint:
    """Says FIX once per daemon, at the first dial that failed the way a block does."""

    def __init__(self, platform: str = sys.platform, service: str | None = None) -> None:
        service = os.environ.get(SERVICE_ENV, "") if service is None else service
        self.applies = platform == "darwin" and service == "launch-agent"
        self.said = False

    def dial_failed(self, details: str) -> bool:
        """Note a failed dial's error text; True when this is the time to say the fix."""
        if not self.applies or self.said or "no route to host" not in details.lower():
            return False
        self.said = True
        log.warning(FIX)
        return True
