"""Fixtures: a started server on port 0 with its own registry, stopped after each test."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

import syncws

from .helpers import make_server


@pytest.fixture
def server() -> Iterator[syncws.WebSocketServer]:
    """A started server with an /echo endpoint and its own registry."""
    srv = make_server()
    try:
        yield srv
    finally:
        srv.stop()
