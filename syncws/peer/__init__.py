"""The peer side: ``RemoteService``, which connects to a server, answers its requests with
registered commands on its own worker threads and makes requests of its own.

Layer 4: imports ``calls``, ``client``, ``engine``, ``protocol`` and the base modules.
"""
