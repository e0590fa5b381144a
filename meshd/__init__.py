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
    "ModelLoad",
    "ModelState",
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
    )
    from meshd.client import (
        Completion as Completion,
    )
    from meshd.client import (
        MeshClient as MeshClient,
    )
    from meshd.errors import (
        AccessDenied as AccessDenied,
    )
    from meshd.errors import (
        Cancelled as Cancelled,
    )
    from meshd.errors import (
        ConfigError as ConfigError,
    )
    from meshd.errors import (
        DeadlineExceeded as DeadlineExceeded,
    )
    from meshd.errors import (
        DownloadFailed as DownloadFailed,
    )
    from meshd.errors import (
        InsufficientMemory as InsufficientMemory,
    )
    from meshd.errors import (
        InsufficientSpace as InsufficientSpace,
    )
    from meshd.errors import (
        IntegrityError as IntegrityError,
    )
    from meshd.errors import (
        InvalidModelFile as InvalidModelFile,
    )
    from meshd.errors import (
        InvalidRequest as InvalidRequest,
    )
    from meshd.errors import (
        MeshdError as MeshdError,
    )
    from meshd.errors import (
        ModelNotFound as ModelNotFound,
    )
    from meshd.errors import (
        ModelUnavailable as ModelUnavailable,
    )
    from meshd.errors import (
        Overloaded as Overloaded,
    )
    from meshd.errors import (
        PeerUnavailable as PeerUnavailable,
    )
    from meshd.errors import (
        RequestTooLarge as RequestTooLarge,
    )
    from meshd.errors import (
        RunnerFailed as RunnerFailed,
    )
    from meshd.types import (
        ChatMessage as ChatMessage,
    )
    from meshd.types import (
        Chunk as Chunk,
    )
    from meshd.types import (
        FinishReason as FinishReason,
    )
    from meshd.types import (
        MeshPeer as MeshPeer,
    )
    from meshd.types import (
        MeshStatus as MeshStatus,
    )
    from meshd.types import (
        ModelInfo as ModelInfo,
    )
    from meshd.types import (
        ModelLoad as ModelLoad,
    )
    from meshd.types import (
        ModelState as ModelState,
    )
    from meshd.types import (
        PeerStatus as PeerStatus,
    )
    from meshd.types import (
        RoutingRecord as RoutingRecord,
    )
    from meshd.types import (
        Sampling as Sampling,
    )
    from meshd.types import (
        WarmResult as WarmResult,
    )
