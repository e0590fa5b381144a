"""The model host: load, warm, slots, streaming, keep-alive and eviction."""

from meshd.engine.engine import Engine

__all__ = ["Engine"]
