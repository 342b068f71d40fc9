"""A TCP proxy that forwards bytes both ways until it is told to stall large replies.

It works below TLS: it sees records, not commands. Once ``stall_large`` is set, the
first chunk from the server of ``threshold`` bytes or more on a connection (a
payload or manifest, never the small replies of XREAD, STRLEN or a status write)
and everything after it on that connection is held back: a server that stops
sending in the middle of a download. Once ``trickle`` is set, every chunk from the
server waits ``trickle_s`` first: a server that answers each read just inside a
client's timeout, so that only a deadline for the whole download stops it.
While ``cut`` is set, nothing gets through either way and new connections are
accepted and left silent: a link that drops every packet, which a client meets as
timeouts, not as refused connections. ``heal`` ends the cut and closes the
connections that lost bytes to it, as TCP would once its retransmissions gave up.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time


class StallProxy:
    def __init__(self, upstream_port: int, threshold: int = 1500, trickle_s: float = 0.2) -> None:
        self.upstream_port = upstream_port
        self.threshold = threshold
        self.trickle_s = trickle_s
        self.trickle = threading.Event()
        self.stall_large = threading.Event()
        self.stalled = threading.Event()  # a connection was stalled
        self.cut = threading.Event()
        self._cut_off: list[socket.socket] = []  # connections that lost bytes to a cut
        self._lock = threading.Lock()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        threading.Thread(target=self._accept, name="stall-proxy", daemon=True).start()

    def close(self) -> None:
        self._listener.close()

    def heal(self) -> None:
        """End a cut: close the connections it broke; new ones get through."""
        self.cut.clear()
        with self._lock:
            broken, self._cut_off = self._cut_off, []
        for sock in broken:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                sock.close()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
            except OSError:  # the server is down (restarting): so is this connection
                client.close()
                continue
            if self.cut.is_set():
                self._broken(client, upstream)
            threading.Thread(target=self._pump, args=(client, upstream, False), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, True), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, from_server: bool) -> None:
        held = False
        with contextlib.suppress(OSError):
            while data := src.recv(65536):
                if from_server and self.stall_large.is_set() and len(data) >= self.threshold:
                    held = True
                    self.stalled.set()
                if from_server and self.trickle.is_set():
                    time.sleep(self.trickle_s)
                if self.cut.is_set():
                    self._broken(src, dst)
                    continue
                if not held:
                    dst.sendall(data)
        with contextlib.suppress(OSError):
            dst.close()

    def _broken(self, *socks: socket.socket) -> None:
        with self._lock:
            self._cut_off.extend(s for s in socks if s not in self._cut_off)
