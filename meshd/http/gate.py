"""Who gets in over HTTP: the Host header (against DNS rebinding), the Origin (CORS
allowlist), and API keys where the listener is not loopback. Decisions only; the ASGI
middleware in meshd.http.app applies them."""

from __future__ import annotations

import collections
import logging
import time
from collections.abc import Iterable

from meshd.addresses import is_loopback
from meshd.errors import AccessDenied
from meshd.http.openai import HttpError
from meshd.logthrottle import Throttle
from meshd.security.apikeys import KeyCheck, KeyHolder

log = logging.getLogger("meshd.http")

DEFAULT_ORIGINS = (
    "http://localhost:*",
    "http://127.0.0.1:*",
    "http://[::1]:*",
    "https://localhost:*",
    "app://*",
    "tauri://*",
)
# Not by default: "null" (a page opened from a file, but also any site's sandboxed iframe or
# no-referrer form) and "file://*"; an owner who wants them lists them in http_origins.
BAD_KEYS_PER_MINUTE = 10
PUBLIC_PATHS = frozenset({"/", "/meshd-warm.js"})  # no data: the page and the script


def origin_allowed(origin: str, patterns: Iterable[str]) -> bool:
    """Whether an Origin matches a pattern: exact, `scheme://host:*` (any port or none), or
    `scheme://*` (any origin of that scheme)."""
    for pattern in patterns:
        if pattern == origin:
            return True
        if pattern.endswith("://*") and origin.startswith(pattern[:-1]):
            return True
        if pattern.endswith(":*"):
            base = pattern[:-2]
            port = origin.removeprefix(base)
            if origin == base or (port.startswith(":") and port[1:].isdigit()):
                return True
    return False


def host_of_header(host: str) -> str:
    """The host name of a Host header, without port and brackets."""
    if host.startswith("["):
        return host[1 : host.find("]")] if "]" in host else host
    return host.rpartition(":")[0] if ":" in host else host


class Gate:
    """The HTTP door's access decisions for one daemon."""

    def __init__(
        self,
        *,
        keys_required: bool,
        keys: KeyCheck | None,
        hosts: Iterable[str] = (),
        origins: Iterable[str] = DEFAULT_ORIGINS,
    ) -> None:
        self.keys_required, self.keys = keys_required, keys
        self.hosts = frozenset(h.lower() for h in hosts)
        self.origins = tuple(origins)
        self._bad: dict[str, collections.deque[float]] = {}
        self._throttle = Throttle()

    def check_host(self, host: str) -> None:
        """Without keys, only a loopback name (or a configured one) may be asked for: a page
        on another site that rebinds its DNS name to 127.0.0.1 is refused (403)."""
        if self.keys_required:
            return
        name = host_of_header(host).lower()
        if not (is_loopback(name) or name in self.hosts):
            raise HttpError(
                403,
                f"Host {name[:64]!r} is not served here",
                "permission_error",
                code="host_not_allowed",
            )

    def check_origin(self, origin: str | None) -> None:
        """A browser's request from an origin off the allowlist is refused (403)."""
        if origin is not None and not origin_allowed(origin, self.origins):
            raise HttpError(
                403,
                f"origin {origin[:80]!r} is not allowed (http_origins)",
                "permission_error",
                code="origin_not_allowed",
            )

    def authenticate(self, path: str, authorization: str | None, source: str) -> KeyHolder | None:
        """The app a Bearer key names, when keys are required (401 without a good one, 429
        after BAD_KEYS_PER_MINUTE bad ones from one source)."""
        if not self.keys_required or path in PUBLIC_PATHS:
            return None
        scheme, _, key = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not key.strip() or self.keys is None:
            # No key at all is no guess at one: it never counts toward the lockout, so a page's
            # keyless calls cannot lock out the good key of the app beside it.
            raise HttpError(
                401,
                "an API key is required: Authorization: Bearer meshd_…",
                "authentication_error",
                code="invalid_api_key",
            )
        now = time.monotonic()
        bad = self._bad.setdefault(source, collections.deque())
        while bad and now - bad[0] > 60:
            bad.popleft()
        if len(bad) >= BAD_KEYS_PER_MINUTE:
            raise HttpError(
                429,
                "too many bad API keys from here: wait a minute",
                "rate_limit_error",
                code="too_many_bad_keys",
                retry_after=60,
            )
        try:
            return self.keys.holder(key.strip())
        except AccessDenied as error:
            bad.append(now)
            if len(self._bad) > 4096:
                self._bad.pop(next(iter(self._bad)))
            self._throttle.log(
                log, logging.WARNING, source, "refused HTTP from %s: %s", source, error
            )
            raise HttpError(
                401, str(error), "authentication_error", code="invalid_api_key"
            ) from None
