"""Fixtures for the interop tests: the real engine binaries and the installed plugin.

The first run builds the engine (a few minutes; see interop/build.sh). CI runs
``interop/build.sh`` before pytest so that build is not charged to a test's timeout.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from engine_harness import EngineServer, engine_binaries, install_plugin


@pytest.fixture(scope="session")
def engine_bin() -> Path:
    """Directory holding the engine's ``server`` and ``wfctl``."""
    return engine_binaries()


@pytest.fixture(scope="session")
def plugins_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A plugins directory with the plugin installed by its own ``install`` command."""
    folder = tmp_path_factory.mktemp("plugins")
    install_plugin(folder)
    return folder


@pytest.fixture
def make_engine(engine_bin: Path, tmp_path: Path) -> Iterator[Callable[..., EngineServer]]:
    """Factory for ``EngineServer``s in this test's temp dir; all are killed at teardown."""
    started: list[EngineServer] = []

    def make(config: Path, env: dict[str, str] | None = None) -> EngineServer:
        data_dir = tmp_path / f"engine-{len(started)}"
        data_dir.mkdir()
        server = EngineServer(engine_bin, config, data_dir, env)
        started.append(server)
        return server

    yield make
    for server in started:
        server.cleanup()
