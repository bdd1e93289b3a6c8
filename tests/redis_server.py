"""A real redis-server for the cluster tests: started on a free loopback port, stopped after."""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import threading
from typing import Optional

import pytest

REDIS_SERVER = shutil.which("redis-server")
needs_redis = pytest.mark.skipif(REDIS_SERVER is None, reason="needs redis-server (Debian's redis-server package) on PATH")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


class RedisServer:
    """One redis-server process on 127.0.0.1, with no persistence; ``restart()`` keeps its port."""

    def __init__(self, password: Optional[str] = None) -> None:
        self.port = free_port()
        self.password = password
        self.dir = tempfile.TemporaryDirectory(prefix="syncws-redis-")
        self.process: Optional[subprocess.Popen[bytes]] = None

    @property
    def url(self) -> str:
        credentials = f":{self.password}@" if self.password else ""
        return f"redis://{credentials}127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        assert REDIS_SERVER is not None
        self.process = subprocess.Popen(
            [REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", self.dir.name]
            + (["--requirepass", self.password] if self.password else []),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        # redis-server logs "Ready to accept connections" once it listens: wait for that line,
        # reading its log on a thread that also drains it afterwards (a full pipe would stall it).
        ready = threading.Event()
        threading.Thread(target=self._read_log, args=(self.process, ready), daemon=True).start()
        if not ready.wait(10):
            self.stop()
            raise RuntimeError("redis-server did not start within 10 s")
        return self

    @staticmethod
    def _read_log(process: subprocess.Popen[str], ready: threading.Event) -> None:
        assert process.stdout is not None
        for line in process.stdout:
            if "Ready to accept connections" in line:
                ready.set()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)
        self.process = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def close(self) -> None:
        self.stop()
        self.dir.cleanup()
