"""A loopback TCP shim that can cut links between node processes (network partitions).

Why not network namespaces: they work here (we are root), but nodes in separate namespaces need
addresses outside 127.0.0.0/8 on veth pairs, and the project allows no other address anywhere.
So each directed peer link A→B goes through a forwarder on 127.0.0.1: A's ``--peers`` names the
forwarder instead of B. ``cut`` drops the link's open connections and refuses new ones (both
directions of a pair are cut together); ``heal`` lets them through again. Clients talk to the
nodes directly, as they would across a partition that only splits the region's own links.
"""

from __future__ import annotations

import contextlib
import socket
import threading

from tests.integration.nodeproc import free_port


class Link:
    def __init__(self, dst_port: int) -> None:
        self.dst_port = dst_port
        self.port = free_port()
        self.cut_ = False
        self._conns: list[socket.socket] = []
        self._lock = threading.Lock()
        self._srv = socket.create_server(("127.0.0.1", self.port))
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._closed:
            try:
                c, _ = self._srv.accept()
            except OSError:
                return
            if self.cut_:
                c.close()
                continue
            try:
                d = socket.create_connection(("127.0.0.1", self.dst_port), timeout=2)
            except OSError:
                c.close()
                continue
            d.settimeout(None)
            with self._lock:
                self._conns += [c, d]
            threading.Thread(target=self._pump, args=(c, d), daemon=True).start()
            threading.Thread(target=self._pump, args=(d, c), daemon=True).start()

    def _pump(self, a: socket.socket, b: socket.socket) -> None:
        try:
            while True:
                data = a.recv(65536)
                if not data or self.cut_:
                    break
                b.sendall(data)
        except OSError:
            pass
        for s in (a, b):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()

    def cut(self) -> None:
        self.cut_ = True
        with self._lock:
            conns, self._conns = self._conns, []
        for s in conns:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()

    def heal(self) -> None:
        self.cut_ = False

    def close(self) -> None:
        self._closed = True
        self.cut()
        self._srv.close()


class Shim:
    """One Link per ordered pair of nodes (by node id)."""

    def __init__(self, ports: dict[str, int]) -> None:
        self.links = {(a, b): Link(ports[b]) for a in ports for b in ports if a != b}

    def address(self, src: str, dst: str) -> str:
        return f"127.0.0.1:{self.links[(src, dst)].port}"

    def isolate(self, node: str) -> None:
        for (a, b), link in self.links.items():
            if node in (a, b):
                link.cut()

    def heal_all(self) -> None:
        for link in self.links.values():
            link.heal()

    def close(self) -> None:
        for link in self.links.values():
            link.close()
