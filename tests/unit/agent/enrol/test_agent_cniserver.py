"""The CNI socket: permissions, one request one reply, malformed frames, over a real socket."""

from __future__ import annotations

import asyncio
import json
import socket
from pathlib import Path

from nodemesh_cni.protocol import Pod, PodIP, Request, decode_reply, encode_request

from nodeagent.enrol.cniserver import CniServer
from nodeagent.enrol.enrolment import AddRequest, Outcome


class ScriptedEnroller:
    def __init__(self) -> None:
        self.added: list[AddRequest] = []

    async def add(self, req: AddRequest) -> Outcome:
        self.added.append(req)
        return Outcome("ok", "enrolled", meshed=True)

    async def delete(self, container_id: str, netns: str) -> Outcome:
        return Outcome("ok", "removed")

    async def check(self, container_id: str, namespace: str, name: str) -> Outcome:
        raise RuntimeError("boom")

    async def gc(self, valid: set[str]) -> Outcome:
        return Outcome("ok")

    def status(self) -> Outcome:
        return Outcome("retry", "not synchronised")


async def _exchange(path: Path, data: bytes) -> bytes:
    reader, writer = await asyncio.open_unix_connection(str(path))
    writer.write(data)
    await writer.drain()
    reply = await asyncio.wait_for(reader.readline(), 5)
    writer.close()
    return reply


async def test_requests_are_answered_on_a_private_socket(tmp_path: Path) -> None:
    enroller = ScriptedEnroller()
    path = tmp_path / "run" / "cni.sock"
    server = CniServer(enroller, path)  # type: ignore[arg-type]
    await server.start()
    try:
        assert path.stat().st_mode & 0o777 == 0o600
        pod = Pod(
            container_id="c1",
            netns="/run/netns/x",
            ifname="eth0",
            namespace="shop",
            name="web",
            uid="u1",
            ips=(PodIP(address="10.0.0.2/24"), PodIP(address="fd00::2/64")),
        )
        reply = decode_reply(await _exchange(path, encode_request(Request(command="add", pod=pod))))
        assert (reply.status, reply.meshed) == ("ok", True)
        assert enroller.added[0].ips == ("10.0.0.2",)
        reply = decode_reply(await _exchange(path, encode_request(Request(command="status"))))
        assert reply.status == "retry"
        reply = decode_reply(
            await _exchange(path, encode_request(Request(command="check", pod=pod)))
        )
        assert reply.status == "error" and "boom" in reply.message
        reply = decode_reply(await _exchange(path, b'{"v": 1, "id": "x1", "cmd": "dance"}\n'))
        assert (reply.id, reply.status) == ("x1", "error")
        # No id to echo: the reply carries "" (which decode_reply itself refuses to read).
        raw = json.loads(await _exchange(path, b"not json\n"))
        assert (raw["id"], raw["status"]) == ("", "error")
    finally:
        await server.stop()
    assert not path.exists()
    probe = socket.socket(socket.AF_UNIX)
    with probe:
        assert probe.connect_ex(str(path)) != 0
