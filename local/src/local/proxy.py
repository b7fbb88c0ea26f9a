"""A TCP proxy in front of a server, to take it away and give it back without stopping it (fault tests, `make soak`)."""

from __future__ import annotations

import socket
import threading

from local.processes import free_port


class TcpProxy:
    """A TCP proxy on 127.0.0.1 in front of a server, to take the server away without stopping it.

    `cut()` refuses new connections and drops the open ones (the server is down); `stall()` accepts connections
    and never answers (the server hangs); `restore()` forwards again, on the same port. The server keeps its
    state throughout: moto's S3 server keeps its objects only in memory.
    """

    def __init__(self, target_url: str):
        host, _, port = target_url.removeprefix("http://").rstrip("/").partition(":")
        self.target = (host, int(port))
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.stalled = False
        self._listener: socket.socket | None = None
        self._open: set[socket.socket] = set()
        self._lock = threading.Lock()

    def start(self) -> "TcpProxy":
        self._listener = socket.create_server(("127.0.0.1", self.port))  # SO_REUSEADDR: the port comes back
        threading.Thread(target=self._accept, args=(self._listener,), daemon=True).start()
        return self

    def cut(self) -> None:
        if self._listener is not None:
            self._listener.shutdown(socket.SHUT_RDWR)  # wakes the thread blocked in accept()
            self._listener.close()
            self._listener = None
        self._drop_open()

    def stall(self) -> None:
        self.stalled = True
        self._drop_open()
        if self._listener is None:
            self.start()

    def restore(self) -> None:
        self.stalled = False
        if self._listener is None:
            self.start()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            self._track(client)
            if self.stalled:
                continue
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                self._close(client)
                continue
            self._track(upstream)
            threading.Thread(target=self._pipe, args=(client, upstream), daemon=True).start()
            threading.Thread(target=self._pipe, args=(upstream, client), daemon=True).start()

    def _pipe(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            self._close(source)
            self._close(sink)

    def _track(self, sock: socket.socket) -> None:
        with self._lock:
            self._open.add(sock)

    def _close(self, sock: socket.socket) -> None:
        with self._lock:
            self._open.discard(sock)
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        sock.close()

    def _drop_open(self) -> None:
        with self._lock:
            open_now = list(self._open)
        for sock in open_now:
            self._close(sock)
