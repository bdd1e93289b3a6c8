"""The syncws benchmark: syncws against a raw-TCP floor and other websocket stacks.

Run it from the repository root with ``python -m benchmarks [--quick] ...``
(or ``python -m syncws bench ...`` from a source checkout); ``--help`` lists
the options and docs/benchmarks.md the figures. The package is part of the
source checkout only, never installed with syncws.

Modules:

- ``run``: the driver: options, repetitions, the table (``main``);
- ``workloads``: the main group's workloads and the handles of the child
  processes they drive (``Peer``, ``Server``);
- ``report``: the implementations, workloads and figures, and the table;
- ``peers``: the child processes (servers, request servers, peers),
  ``python -m benchmarks.peers ROLE ...``;
- ``cluster``: the cluster group (``--cluster``): nodes on a redis-server of
  its own, requests and a broadcast across them; ``cluster_peers`` its
  child processes;
- ``many_clients``: many connections in one thread, for fan-out and idle;
- ``many_idle``: a benchmark of its own (``python -m benchmarks many-idle``):
  N idle connections, their memory, threads and idle CPU, and how the
  server still answers an echo, a handshake and a broadcast;
- ``common``: what the others share (raw framing, the call table of the
  implementations without one, process figures, ``measure``);
- one module per implementation, each with ``Serve``, ``Client``,
  ``Requester`` and ``run_peer``: ``raw``, ``syncws_impl``,
  ``websockets_impl``, ``tornado_design`` and ``websocket_server_impl``.
"""
