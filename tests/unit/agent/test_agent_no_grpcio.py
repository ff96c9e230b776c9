"""The agent process never loads grpcio (issue 17: its C core cost each agent ~10-16 MB of RSS
for four client calls); its control-plane client is grpclib. Checked in a fresh interpreter,
the way the agent starts: its entry modules imported, then a call made on its channel."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]

PROBE = textwrap.dedent(
    """
    import asyncio, json, socket, sys

    import nodeagent.handover.keeper  # the container's first process (--keep-sockets)
    import nodeagent.main  # the agent: imports everything it runs

    def loaded():
        return sorted(m for m in sys.modules if m == "grpc" or m.startswith(("grpc.", "grpc_")))

    print(json.dumps(loaded()), flush=True)

    from nodeagent.upstream.channel import CallFailed, open_channel, unary
    from nodeagent.upstream.identity import CERTIFY
    from nodemesh.api import identity_pb2

    async def one_call():
        with socket.socket() as s:  # a port nobody listens on
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        channel = open_channel(f"127.0.0.1:{port}", insecure=True, token=lambda: "t")
        try:
            await unary(channel, CERTIFY, identity_pb2.CertifyRequest(),
                        identity_pb2.CertifyResponse, timeout=2)
        except CallFailed as exc:
            return exc.code
        finally:
            channel.close()

    code = asyncio.run(one_call())
    print(json.dumps({"after_call": loaded(), "code": code}))
    """
)


def test_the_agent_runs_without_loading_grpcio() -> None:
    out = subprocess.run(
        [sys.executable, "-c", PROBE], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    lines = out.stdout.strip().splitlines()
    assert lines, out.stderr
    assert json.loads(lines[0]) == [], "grpcio modules the agent imports"
    assert out.returncode == 0, out.stderr
    seen = json.loads(lines[1])
    assert seen["after_call"] == [], seen
    assert seen["code"] == "UNAVAILABLE"  # the call really went out (and found no server)
