"""The selector engine, being built to hold every connection of a server on one I/O thread:
``loop`` (``IOLoop``, one ``selectors`` thread for many sockets, their deadlines and calls
posted from other threads), ``timers`` (the heap of deadlines it waits on) and
``handler_pool`` (elastic worker threads that run each connection's handler calls in order,
one at a time) and ``stream`` (one open websocket on the loop: reads, pongs, the closing
handshake and keepalive on the loop thread, messages to its lane, writes from any thread
flushed on writability). Nothing uses it yet: ``engine`` still gives each connection its
thread.

Layer 2, beside ``engine``: imports ``protocol`` and the base modules only. Its threads:
``syncws-io`` (the loop) and ``syncws-worker-N`` (the pool).
"""
