"""Several servers as one cluster on Redis: presence records, ``RedisCluster`` (broadcasts
on pub/sub, the link token), a server's side of it (``node``), the links between nodes
and where a call goes (``routing``).

Layer 4: imports ``handlers``, ``calls``, ``client``, ``engine``, ``protocol`` and the
base modules; the server (``server/``) stands on it. Its threads are named
``syncws-cluster-*`` and ``syncws-node-link``. What it reads from Redis is
checked as untrusted input (``untrusted``); its long-running threads are
kept running (``threads``); ``redis_io`` bounds reads by a caller's deadline
and tells a PUBLISH that went out from one that may have (``subscriber`` is
the loop that reads the channel).
"""

from __future__ import annotations

from .cluster import ClusterConnection, ClusterError, LocalNode, RedisCluster, SendUnconfirmed

__all__ = ["ClusterConnection", "ClusterError", "LocalNode", "RedisCluster", "SendUnconfirmed"]
