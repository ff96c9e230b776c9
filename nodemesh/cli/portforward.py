"""Local TCP ports relayed elsewhere, held while a command runs: to a pod port through the
Kubernetes API (what `kubectl port-forward` does), or to an address inside a lab node's netns."""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)
Opener = Callable[[], Any]  # returns a connected socket-like object (recv, sendall, shutdown)


def _pump(src: Any, dst: Any) -> None:
    try:
        while True:
            data = src.recv(65536)
            if not data:
                break
            dst.sendall(data)
    except OSError:
        pass
    finally:
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)


class LocalForward:
    """Listens on 127.0.0.1:`port` (0: any free port); each connection gets its own upstream."""

    def __init__(self, opener: Opener, *, port: int = 0) -> None:
        self.opener = opener
        self.listener = socket.create_server(("127.0.0.1", port))
        self.address = f"127.0.0.1:{self.listener.getsockname()[1]}"
        self._thread = threading.Thread(target=self._accept, name="forward", daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._relay, args=(conn,), daemon=True).start()

    def _relay(self, conn: socket.socket) -> None:
        try:
            upstream = self.opener()
        except Exception as exc:  # the API's and the kernel's errors alike fail this connection
            log.debug("forward from %s failed: %s", self.address, exc)
            conn.close()
            return
        back = threading.Thread(target=_pump, args=(upstream, conn), daemon=True)
        back.start()
        _pump(conn, upstream)
        back.join()
        conn.close()
        upstream.close()

    def close(self) -> None:
        self.listener.close()


def pod_opener(api: Any, *, namespace: str, pod: str, port: int) -> Opener:
    from kubernetes import client
    from kubernetes.stream import portforward

    core = client.CoreV1Api(api)

    def open_() -> Any:
        pf = portforward(
            core.connect_get_namespaced_pod_portforward, pod, namespace, ports=str(port)
        )
        return pf.socket(port)

    return open_


def netns_opener(netns: str, host: str, port: int) -> Opener:
    from nodemesh.netns import socket_in_netns

    def open_() -> socket.socket:
        s = socket_in_netns(netns)
        s.settimeout(10)
        try:
            s.connect((host, port))
        except OSError:
            s.close()
            raise
        s.settimeout(None)
        return s

    return open_
