"""Fixtures: a tiny real GGUF, and real daemons on 127.0.0.1:0 (in-process or as processes)."""

from __future__ import annotations

import asyncio
import os
import sys
import threading
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).parent))
# Tests never announce on the real network: mDNS only where a test builds its own namespaces.
os.environ["MESHD_DISCOVERY"] = "false"
# Daemons outside any mesh serve plaintext loopback TCP; tests/integration/test_security.py
# turns this off and runs real meshes with mutual TLS.
os.environ["MESHD_INSECURE_DEV"] = "true"
# Test daemons share two cores and the page cache with each other: none yields to "its owner's
# work" because of another test's load. Yielding is tested with samples given to it
# (test_yield_mesh.py) and the sampler on its own (test_hostload.py).
os.environ["MESHD_YIELD_TO_HOST"] = "false"

from tinygguf import write_tiny_gguf

from meshd.config import Settings, load_settings
from meshd.node import Node


class NodeThread:
    """A real Node serving on its own event loop in a background thread of the test process."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.node: Node | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="node", daemon=True)

    @property
    def address(self) -> str:
        assert self.node is not None
        return self.node.address

    @property
    def engine(self) -> Any:
        assert self.node is not None
        return self.node.engine

    def start(self) -> NodeThread:
        self._thread.start()
        self._ready.wait(120)
        if self._error:
            raise self._error
        return self

    def _run(self) -> None:
        async def main() -> None:
            self.loop = asyncio.get_running_loop()
            self._stop = asyncio.Event()
            self.node = Node(self.settings)
            try:
                await self.node.start()
            except BaseException as exc:
                self._error = exc
                self._ready.set()
                return
            self._ready.set()
            await self._stop.wait()
            await self.node.stop(grace=1.0)

        asyncio.run(main())

    def call(self, coro: Coroutine[Any, Any, Any], timeout: float = 30) -> Any:
        """Run a coroutine on the node's loop and return its result."""
        assert self.loop is not None
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def stop(self) -> None:
        if self.loop is not None and self._stop is not None and self._thread.is_alive():
            self.loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(30)


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A ~0.5 MB llama-architecture GGUF with random weights; real llama.cpp runs it."""
    return write_tiny_gguf(tmp_path_factory.mktemp("models") / "tiny.gguf")


def node_settings(home: Path, models: dict[str, Path], **flags: Any) -> Settings:
    """Settings for a test daemon: loopback, port 0, one thread, small context."""
    base: dict[str, Any] = {
        "listen": "127.0.0.1:0",
        "discovery": False,
        "models": [f"{name}={path}" for name, path in models.items()],
        "context": 512,
        "threads": 1,
        "insecure_dev": True,
        "http_listen": "127.0.0.1:0",
        "yield_to_host": False,  # (see MESHD_YIELD_TO_HOST above)
    }
    return load_settings(home, {**base, **flags}, environ={})


@pytest.fixture
def start_node(tmp_path: Path, tiny_model: Path) -> Iterator[Callable[..., NodeThread]]:
    """Start in-process daemons: start_node(models={...}, name=..., **settings) -> NodeThread;
    the home is tmp_path/name (default node0, node1, ...)."""
    started: list[NodeThread] = []

    def start(
        models: dict[str, Path] | None = None, name: str | None = None, **flags: Any
    ) -> NodeThread:
        home = tmp_path / (name or f"node{len(started)}")
        settings = node_settings(home, {"tiny": tiny_model} if models is None else models, **flags)
        node = NodeThread(settings).start()
        started.append(node)
        return node

    yield start
    for node in started:
        node.stop()


@pytest.fixture
def start_peer(start_node: Callable[..., NodeThread]) -> Callable[..., NodeThread]:
    """start_peer(name, models) -> a NodeThread serving mutual TLS from tmp_path/name."""

    def start(name: str, models: dict[str, Path] | None = None, **flags: Any) -> NodeThread:
        return start_node(models, name=name, insecure_dev=False, **flags)

    return start
