"""The I/O of one connection: the socket and its deadlines (``transport``), the pump between
socket and protocol (``connection``), the closing handshake, keepalive pings and the
outbox of broadcasts waiting for a slow socket.

Layer 2: imports ``protocol`` and the base modules only. Its code runs on whichever
thread reads the connection (a server's ``syncws-conn-N``, a client's reader) and on
the threads that send.
"""
