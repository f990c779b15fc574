"""An S3 endpoint that a test can take away and bring back at known points: a TCP proxy in front of the session's
moto server. While it is down every connection is accepted and reset at once (as from an endpoint that went away)
and counted, so a test waits for "the job met the outage N times", never for a number of seconds."""
from __future__ import annotations

import socket
import struct
import threading


class OutageProxy:
    def __init__(self, target_port: int):
        self.target = ("127.0.0.1", target_port)
        self.listener = socket.create_server(("127.0.0.1", 0), backlog=128)
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        self.refused = 0
        self._down = threading.Event()
        self._lock = threading.Lock()
        self._open: set[socket.socket] = set()
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def take_down(self) -> None:
        """From now on connections are reset, and those open now are cut (a pooled keep-alive one included)."""
        self._down.set()
        with self._lock:
            for s in list(self._open):
                _reset(s)
            self._open.clear()

    def bring_up(self) -> None:
        self._down.clear()

    def close(self) -> None:
        self._closed = True
        self.take_down()
        self.listener.close()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            if self._down.is_set():
                with self._lock:
                    self.refused += 1
                _reset(client)
                continue
            try:
                upstream = socket.create_connection(self.target)
            except OSError:
                _reset(client)
                continue
            with self._lock:
                self._open.update((client, upstream))
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while chunk := src.recv(65536):
                dst.sendall(chunk)
        except OSError:
            pass
        for s in (src, dst):
            with self._lock:
                self._open.discard(s)
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()


def _reset(s: socket.socket) -> None:
    """Close with RST, not FIN: the peer's next read or write fails at once."""
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        s.close()
    except OSError:
        pass
