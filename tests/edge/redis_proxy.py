"""A TCP proxy in front of the test redis-server that plays Redis finishing a load.

While Redis loads its data set after a restart it answers ``-LOADING`` to each
write it reads, and runs the writes it reads after the load as usual. Redis
checks every command of a pipeline on its own, so a pipeline that arrives as
the load ends has its first writes refused and the rest done. ``LoadingProxy``
makes that moment exact: it refuses the first ``refuse`` writes it reads and
passes everything else through to the real server.

Like Redis it serves one connection's commands at a time, handles all the
commands it has read before it answers them, and runs what it has read even
when the client has gone. It speaks RESP2, what ``edge.connections`` asks for.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from typing import BinaryIO

LOADING = b"-LOADING Redis is loading the dataset in memory\r\n"
#: The commands refused while "loading": the writes the uplink sends.
WRITES = frozenset({b"XADD", b"EVAL", b"EVALSHA"})


class LoadingProxy:
    def __init__(self, upstream_port: int, refuse: int) -> None:
        self.upstream_port = upstream_port
        self.refuse = refuse  # writes still to refuse
        self._serial = threading.Lock()  # one connection's commands at a time, as in Redis
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        threading.Thread(target=self._accept, name="loading-proxy", daemon=True).start()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def close(self) -> None:
        self._listener.close()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
        with client, upstream, upstream.makefile("rb") as replies:
            pending = b""
            while True:
                try:
                    data = client.recv(1 << 16)
                except OSError:
                    data = b""
                if not data:
                    return
                pending += data
                answers = []
                with self._serial:
                    while (split := _split_command(pending)) is not None:
                        raw, name, pending = split
                        answers.append(self._answer(raw, name, upstream, replies))
                with contextlib.suppress(OSError):  # the client left; its commands ran anyway
                    client.sendall(b"".join(answers))

    def _answer(self, raw: bytes, name: bytes, upstream: socket.socket, replies: BinaryIO) -> bytes:
        if name in WRITES and self.refuse > 0:
            self.refuse -= 1
            return LOADING
        upstream.sendall(raw)
        return _read_reply(replies)


def _split_command(buffer: bytes) -> tuple[bytes, bytes, bytes] | None:
    """(the first command's bytes, its name in capitals, the rest), or None when
    ``buffer`` does not hold a whole command yet."""
    end = buffer.find(b"\r\n")
    if end < 0:
        return None
    if not buffer.startswith(b"*"):
        raise ValueError(f"not a RESP array: {buffer[:20]!r}")
    at, args = end + 2, []
    for _ in range(int(buffer[1:end])):
        end = buffer.find(b"\r\n", at)
        if end < 0:
            return None
        size = int(buffer[at + 1 : end])
        if len(buffer) < end + 2 + size + 2:
            return None
        args.append(buffer[end + 2 : end + 2 + size])
        at = end + 2 + size + 2
    return buffer[:at], args[0].upper(), buffer[at:]


def _read_reply(stream: BinaryIO) -> bytes:
    """One whole RESP2 reply, as bytes."""
    line = stream.readline()
    kind, rest = line[:1], line[1:-2]
    if kind == b"$" and int(rest) >= 0:
        return line + stream.read(int(rest) + 2)
    if kind == b"*" and int(rest) >= 0:
        return line + b"".join(_read_reply(stream) for _ in range(int(rest)))
    return line
