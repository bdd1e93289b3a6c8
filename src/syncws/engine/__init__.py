"""The I/O of one connection: the socket (``transport``, with its ticks and deadlines in
``ticks`` and its TLS calls in ``tls``), the pump between socket and protocol
(``connection``, with its blocking sends in ``sending``), the closing handshake,
keepalive pings and the outbox of broadcasts waiting for a slow socket. ``reactor``, beside
it, is the selector engine being built to replace its thread per connection.

Layer 2: imports ``protocol`` and the base modules only. Its code runs on whichever
thread reads the connection (a server's ``syncws-conn-N``, a client's reader) and on
the threads that send.
"""
