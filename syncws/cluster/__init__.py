"""Several servers as one cluster on Redis: presence records, ``RedisCluster`` (broadcasts
on pub/sub, the link token), a server's side of it (``node``), the links between nodes
and where a call goes (``routing``).

Layer 4: imports ``handlers``, ``calls``, ``client``, ``engine``, ``protocol`` and the
base modules; the server (``server/``) stands on it. Its threads are named
``syncws-cluster-*`` and ``syncws-node-link``.
"""

from __future__ import annotations

from .cluster import ClusterConnection, ClusterError, LocalNode, RedisCluster

__all__ = ["ClusterConnection", "ClusterError", "LocalNode", "RedisCluster"]
