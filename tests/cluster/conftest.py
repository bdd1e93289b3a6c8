"""Shared by the cluster tests: every RedisCluster a test makes is stopped when it ends.

Calling out through a cluster (choosing a peer with a deadline) starts read
helpers that otherwise live on for seconds after the test; a later test that
counts syncws threads would see them.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from syncws.cluster.cluster import RedisCluster


@pytest.fixture(autouse=True)
def stop_every_cluster(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Stop each RedisCluster made during the test once it ends (stop() is idempotent)."""
    made: list[RedisCluster] = []
    original = RedisCluster.__init__

    def recording_init(self: RedisCluster, *args: Any, **kwargs: Any) -> None:
        original(self, *args, **kwargs)
        made.append(self)

    monkeypatch.setattr(RedisCluster, "__init__", recording_init)
    yield
    for cluster in made:
        cluster.stop()
