"""The agent pod's readiness probe is ready only when the admin port is its own container's.

hostNetwork: a new agent pod's probe of 127.0.0.1:4191 reaches the old agent until the hand-over;
`python3 -m nodeagent.readycheck` must then say "not ready" (in the lab, under load, an httpGet
probe got the old agent's 200 and the rollout stopped the old agent before the hand-over). A
process in a PID namespace of its own (a container) that does not hold the listening socket is
that new pod; the process holding it is the agent that took it over.
"""

from __future__ import annotations

import http.server
import subprocess
import sys
import threading
from collections.abc import Iterator

import pytest

pytestmark = [pytest.mark.root]


class Ready(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
        self.send_response(200 if self.path == "/ready" else 404)
        self.end_headers()
        self.wfile.write(b"ready\n")

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def admin() -> Iterator[int]:
    server = http.server.HTTPServer(("0.0.0.0", 0), Ready)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def check(port: int, *prefix: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*prefix, sys.executable, "-m", "nodeagent.readycheck", f"--port={port}"],
                          capture_output=True, text=True, timeout=60)  # fmt: skip


def test_ready_only_where_the_admin_socket_is_held(admin: int) -> None:
    here = check(admin)
    assert here.returncode == 0 and "ready" in here.stdout, here
    # Another container on the same node (own PID namespace and /proc): the port answers 200,
    # but not for it.
    other = check(admin, "unshare", "--pid", "--fork", "--mount-proc")
    assert other.returncode == 1, other
    assert "not this container's" in other.stdout, other.stdout
