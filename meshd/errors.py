"""The errors meshd raises: one root, one subclass per thing a caller can act on."""

from __future__ import annotations


class MeshdError(Exception):
    """Root of every error meshd raises on purpose; the message is one readable line."""


class InvalidRequest(MeshdError):
    """A request field is out of range or malformed; `field` names it."""

    def __init__(self, message: str, field: str = "") -> None:
        super().__init__(message)
        self.field = field


class ModelNotFound(MeshdError):
    """The peer has no model by that name."""


class InvalidModelFile(MeshdError):
    """A model file is not a well-formed GGUF; refused before llama.cpp opens it."""


class ModelUnavailable(MeshdError):
    """The model exists but cannot run here now (it failed to load)."""


class InsufficientMemory(MeshdError):
    """Loading the model would exceed the memory budget even after eviction."""


class Overloaded(MeshdError):
    """Every slot is busy and the model's queue is full."""


class RequestTooLarge(MeshdError):
    """The request is larger than the peer accepts."""


class PeerUnavailable(MeshdError):
    """The peer cannot be reached, or stopped while answering."""


class RunnerFailed(PeerUnavailable):
    """The model's runner process died or hung while serving; the message says why."""


class DeadlineExceeded(MeshdError):
    """The call's deadline passed before it finished."""


class Cancelled(MeshdError):
    """The call was cancelled."""


class DownloadFailed(MeshdError):
    """A model could not be fetched from its source (HTTP error, stall, refused)."""


class InsufficientSpace(MeshdError):
    """The disk has no room for the model."""


class IntegrityError(MeshdError):
    """Received bytes do not match the expected digest or size."""


class AccessDenied(MeshdError):
    """The caller's certificate or invite is missing, wrong, revoked, or does not allow this."""


class InternalError(MeshdError):
    """A fault of the serving peer, not of the request; its log has the details."""


class ConfigError(MeshdError):
    """The configuration (file, environment or flags) is invalid."""


QUOTE_CHARS = 40


def quoted(text: object, limit: int = QUOTE_CHARS) -> str:
    """Caller input for an error message: repr of at most `limit` characters, so that an error
    never echoes a huge or hostile value back."""
    text = str(text)
    if len(text) <= limit:
        return repr(text)
    return f"{text[:limit]!r}… ({len(text)} characters)"


def error_types() -> dict[str, type[MeshdError]]:
    """Every MeshdError class by name, so that a remote error comes back as its own type."""
    found: dict[str, type[MeshdError]] = {MeshdError.__name__: MeshdError}
    pending: list[type[MeshdError]] = [MeshdError]
    while pending:
        for sub in pending.pop().__subclasses__():
            found[sub.__name__] = sub
            pending.append(sub)
    return found
