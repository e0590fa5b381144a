"""Send llama.cpp's own log lines to Python logging ("meshd.llama"), not straight to stderr."""

from __future__ import annotations

import ctypes
import logging
import threading
from typing import Any

import llama_cpp

log = logging.getLogger("meshd.llama")
GGML_LOG_LEVEL_ERROR = 4  # ggml: 0 none, 1 debug, 2 info, 3 warn, 4 error, 5 continued
_lock = threading.Lock()
_installed: list[Any] = []  # the C callback must outlive every llama.cpp call


@llama_cpp.llama_log_callback  # type: ignore[untyped-decorator]
def _forward(level: int, text: bytes, _user_data: ctypes.c_void_p) -> None:
    message = text.decode("utf-8", errors="replace").rstrip()
    if message:
        # llama.cpp speaks of internals even when all is well: warnings become debug lines.
        log.log(logging.ERROR if level == GGML_LOG_LEVEL_ERROR else logging.DEBUG, "%s", message)


def route_llama_logs() -> None:
    """Install the forwarder once per process (llama.cpp has one global log callback)."""
    with _lock:
        if not _installed:
            llama_cpp.llama_log_set(_forward, ctypes.c_void_p(0))
            _installed.append(_forward)
