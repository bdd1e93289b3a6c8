"""Fixtures: a started server on port 0 with its own registry, stopped after each test."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

import syncws

from .helpers import make_server
from .test_requests import Env


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
