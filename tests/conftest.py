"""Fixtures: a started server on port 0 with its own registry, stopped after each test.

In CI (``CI`` set to anything but ``false``/``0``/empty), a test skipped for a
missing program (a skip reason that starts with "needs") fails instead: CI
installs every program the tests use, so such a skip would hide a broken set-up.
"""

from __future__ import annotations

import os
import signal
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import syncws

from .helpers import make_server, self_signed
from .peers import Env
from .redis_server import RedisServer

IN_CI = os.environ.get("CI", "").lower() not in ("", "0", "false")

# A test run started as a background job of a script inherits SIGINT ignored, and so
# would every `syncws serve` it starts: serve keeps an ignored SIGINT ignored (as it
# should), and the tests that stop it with Ctrl-C would wait in vain. Give the run,
# and so its children, Python's own SIGINT handling back.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[Any]) -> Iterator[None]:
    """In CI, turn a skip for a missing program into a failure."""
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    if IN_CI and report.skipped and isinstance(report.longrepr, tuple):
        reason = str(report.longrepr[2]).removeprefix("Skipped: ")
        if reason.startswith("needs"):
            report.outcome = "failed"
            report.longrepr = f"CI=true, and this test would skip: {reason}. .ci/run installs what the tests need."


@pytest.fixture
def server() -> Iterator[syncws.WebSocketServer]:
    """A started server with an /echo endpoint and its own registry."""
    srv = make_server()
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture
def env() -> Iterator[Env]:
    """A fresh server, registry and RequestHandler; everything it started is stopped afterwards."""
    e = Env()
    try:
        yield e
    finally:
        e.close()


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisServer]:
    """One real redis-server on a free loopback port for a module's tests; each test uses a cluster name of its own."""
    server = RedisServer().start()
    yield server
    server.close()


@pytest.fixture
def cluster_name() -> str:
    """A cluster name no other test uses."""
    return f"test-{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="session")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1, made at test time: (certificate, key)."""
    return self_signed(tmp_path_factory.mktemp("tls"))
