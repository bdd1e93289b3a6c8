"""The peer side: ``RemoteService``, which connects to a server, answers its requests with
registered commands on its own worker threads and makes requests of its own.

Modules: ``remote`` (``RemoteService``), ``supervisor`` (connect, serve, reconnect with
backoff), ``remote_worker`` (one connection's worker threads), ``asking`` (``request()``
to the server), ``rtcloud_peer`` (answering an rt-cloud web server in its format).

Layer 4: imports ``calls``, ``client``, ``engine``, ``protocol`` and the base modules.
"""
