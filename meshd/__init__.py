"""meshd: a mesh of friends' always-on computers that keeps llama.cpp models warm.

What apps use is here: the clients, the errors they raise and the plain result types.

    from meshd import MeshClient, ModelNotFound

Everything else (meshd.engine, meshd.rpc, meshd.runner, …) is internal and may change.
The names load on first use, so `import meshd` stays cheap for the command line.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_CLIENT = ("AsyncMeshClient", "Completion", "MeshClient")
_ERRORS = (
    "AccessDenied",
    "Cancelled",
    "ConfigError",
    "DeadlineExceeded",
    "DownloadFailed",
    "InsufficientMemory",
    "InsufficientSpace",
    "IntegrityError",
    "InternalError",
    "InvalidModelFile",
    "InvalidRequest",
    "MeshdError",
    "ModelNotFound",
    "ModelUnavailable",
    "Overloaded",
    "PeerUnavailable",
    "RequestTooLarge",
    "RunnerFailed",
)
_TYPES = (
    "ChatMessage",
    "Chunk",
    "FinishReason",
    "MeshPeer",
    "MeshStatus",
    "ModelInfo",
    "ModelState",
    "PeerModel",
    "PeerStatus",
    "RoutingRecord",
    "Sampling",
    "WarmResult",
)
_HOME = {
    **dict.fromkeys(_CLIENT, "meshd.client"),
    **dict.fromkeys(_ERRORS, "meshd.errors"),
    **dict.fromkeys(_TYPES, "meshd.types"),
}
__all__ = ["__version__", *_CLIENT, *_ERRORS, *_TYPES]


def __getattr__(name: str) -> Any:
    module = _HOME.get(name)
    if module is None:
        raise AttributeError(f"module 'meshd' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


if TYPE_CHECKING:  # names as the type checker sees them
    from meshd.client import (
        AsyncMeshClient as AsyncMeshClient,
        Completion as Completion,
        MeshClient as MeshClient,
    )
    from meshd.errors import (
        AccessDenied as AccessDenied,
        Cancelled as Cancelled,
        ConfigError as ConfigError,
        DeadlineExceeded as DeadlineExceeded,
        DownloadFailed as DownloadFailed,
        InsufficientMemory as InsufficientMemory,
        InsufficientSpace as InsufficientSpace,
        IntegrityError as IntegrityError,
        InternalError as InternalError,
        InvalidModelFile as InvalidModelFile,
        InvalidRequest as InvalidRequest,
        MeshdError as MeshdError,
        ModelNotFound as ModelNotFound,
        ModelUnavailable as ModelUnavailable,
        Overloaded as Overloaded,
        PeerUnavailable as PeerUnavailable,
        RequestTooLarge as RequestTooLarge,
        RunnerFailed as RunnerFailed,
    )
    from meshd.types import (
        ChatMessage as ChatMessage,
        Chunk as Chunk,
        FinishReason as FinishReason,
        MeshPeer as MeshPeer,
        MeshStatus as MeshStatus,
        ModelInfo as ModelInfo,
        ModelState as ModelState,
        PeerModel as PeerModel,
        PeerStatus as PeerStatus,
        RoutingRecord as RoutingRecord,
        Sampling as Sampling,
        WarmResult as WarmResult,
    )
