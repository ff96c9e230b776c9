"""The hand-over protocol between an old and a new agent on one node, without any I/O.

A new agent (the successor) connects to the old one's unix socket (SOCK_SEQPACKET: one message
per packet, file descriptors attached to the packet that names them) and the two exchange:

    successor                         predecessor
    HELLO {pid}                  ->
                                 <-   OFFER {pid, pods}         (it keeps serving meanwhile)
    ... the successor warms up: control-plane table synced, certificates fetched ...
    TAKE                         ->
                                      (stops CNI requests and its reconciler, saves its state)
                                 <-   SOCKETS {entries, last}   (x N, fds attached, in order)
    ... the successor serves every socket it got ...
    TAKEN                        ->   (the predecessor stops accepting, drains, waits for SIGTERM)
 or ABORT {reason}               ->   (the predecessor resumes as if nothing happened)

Either side answers anything else with REFUSED {reason} and closes. Messages are JSON objects
with the protocol's magic and version in each, so a foreign or stale peer is told plainly.
"""

from __future__ import annotations

import json

# Not `from typing import ...`: the socket keeper imports this module and would load `typing`
# (~0.4 MB) for names only annotations use; type checkers read this constant as typing's.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

MAGIC = "nodemesh-handover"
VERSION = 1
# SCM_MAX_FD is 253; stay below it with room to spare.
MAX_FDS_PER_MESSAGE = 200
MAX_MESSAGE_BYTES = 1 << 20

# What a socket is for: the pod listeners by name, the CNI socket, the admin port, the router
# mode's port on the node.
POD_SOCKETS = ("outbound", "inbound", "tunnel", "dns-tcp", "dns-udp")
ROLES = ("pod", "cni", "admin", "router")


class HandoverProtocolError(ValueError):
    """A hand-over message that is malformed, foreign or out of turn."""


class SocketEntry:
    """One passed file descriptor: which socket it is (the fd travels beside it). Immutable.

    SocketEntry and Message are plain classes, not dataclasses: the socket keeper imports this
    module, and `dataclasses` (with inspect, ast, dis and tokenize it pulls in) cost the keeper
    ~1.1 MB of RSS (issue 17)."""

    __slots__ = ("role", "name", "netns")
    role: str
    name: str
    netns: str

    def __init__(self, role: str, name: str, netns: str = "") -> None:
        object.__setattr__(self, "role", role)
        object.__setattr__(self, "name", name)
        object.__setattr__(self, "netns", netns)

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"SocketEntry is immutable: cannot set {name}")

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, SocketEntry):
            return NotImplemented
        return (self.role, self.name, self.netns) == (other.role, other.name, other.netns)

    def __hash__(self) -> int:
        return hash((self.role, self.name, self.netns))

    def __repr__(self) -> str:
        return f"SocketEntry(role={self.role!r}, name={self.name!r}, netns={self.netns!r})"

    def to_json(self) -> dict[str, str]:
        return {"role": self.role, "name": self.name, "netns": self.netns}

    @classmethod
    def from_json(cls, data: Any) -> SocketEntry:
        if not isinstance(data, dict) or set(data) != {"role", "name", "netns"}:
            raise HandoverProtocolError(f"socket entry {data!r}: want role, name and netns")
        role, name, netns = data["role"], data["name"], data["netns"]
        if not all(isinstance(v, str) for v in (role, name, netns)):
            raise HandoverProtocolError(f"socket entry {data!r}: fields must be strings")
        if role not in ROLES:
            raise HandoverProtocolError(f"socket entry {data!r}: unknown role {role!r}")
        if role == "pod" and (name not in POD_SOCKETS or not netns.startswith("/")):
            raise HandoverProtocolError(
                f"socket entry {data!r}: a pod socket needs one of {', '.join(POD_SOCKETS)} "
                "and an absolute netns path"
            )
        if role != "pod" and (name != role or netns):
            raise HandoverProtocolError(f"socket entry {data!r}: {role} takes no netns")
        return cls(role, name, netns)


class Message:
    """One hand-over message (immutable). `netns` (DROP): the pod netns whose sockets to let go
    of; "" for all."""

    __slots__ = ("type", "pid", "pods", "reason", "last", "entries", "netns")
    _FIELDS = __slots__
    type: str
    pid: int
    pods: int
    reason: str
    last: bool
    entries: tuple[SocketEntry, ...]
    netns: str

    def __init__(
        self,
        type: str,
        pid: int = 0,
        pods: int = 0,
        reason: str = "",
        last: bool = True,
        entries: tuple[SocketEntry, ...] = (),
        netns: str = "",
    ) -> None:
        for name, value in zip(
            self._FIELDS, (type, pid, pods, reason, last, entries, netns), strict=True
        ):
            object.__setattr__(self, name, value)

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"Message is immutable: cannot set {name}")

    def _values(self) -> tuple[object, ...]:
        return tuple(getattr(self, name) for name in self._FIELDS)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Message):
            return NotImplemented
        return self._values() == other._values()

    def __hash__(self) -> int:
        return hash(self._values())

    def __repr__(self) -> str:
        inner = ", ".join(f"{n}={v!r}" for n, v in zip(self._FIELDS, self._values(), strict=True))
        return f"Message({inner})"

    @property
    def fds_expected(self) -> int:
        return len(self.entries)


# Which fields each message type carries; anything else in a message is an error.
FIELDS: dict[str, frozenset[str]] = {
    "HELLO": frozenset({"pid"}),
    "OFFER": frozenset({"pid", "pods"}),
    "TAKE": frozenset(),
    "SOCKETS": frozenset({"entries", "last"}),
    "TAKEN": frozenset(),
    "ABORT": frozenset({"reason"}),
    "REFUSED": frozenset({"reason"}),
    # Between an agent and its socket keeper (nodeagent.handover.keeper); TAKE and SOCKETS as above.
    "KEEP": frozenset({"entries"}),
    "DROP": frozenset({"netns"}),
}

# The conversation as a table: (side, after this message) -> the messages that may come next
# from the other side. None: the start. REFUSED may always come.
NEXT: dict[tuple[str, str | None], frozenset[str]] = {
    # What the predecessor may receive.
    ("predecessor", None): frozenset({"HELLO"}),
    ("predecessor", "HELLO"): frozenset({"TAKE", "ABORT"}),
    ("predecessor", "TAKE"): frozenset({"TAKEN", "ABORT"}),
    # What the successor may receive.
    ("successor", None): frozenset({"OFFER"}),
    ("successor", "OFFER"): frozenset({"SOCKETS"}),
    ("successor", "SOCKETS"): frozenset({"SOCKETS"}),
}


def encode(msg: Message) -> bytes:
    body: dict[str, Any] = {"magic": MAGIC, "version": VERSION, "type": msg.type}
    wanted = FIELDS[msg.type]
    if "pid" in wanted:
        body["pid"] = msg.pid
    if "pods" in wanted:
        body["pods"] = msg.pods
    if "reason" in wanted:
        body["reason"] = msg.reason
    if "last" in wanted:
        body["last"] = msg.last
    if "netns" in wanted:
        body["netns"] = msg.netns
    if "entries" in wanted:
        if len(msg.entries) > MAX_FDS_PER_MESSAGE:
            raise HandoverProtocolError(f"{len(msg.entries)} sockets in one message")
        body["entries"] = [e.to_json() for e in msg.entries]
    return json.dumps(body, separators=(",", ":")).encode()


def decode(data: bytes, *, fds: int = 0) -> Message:
    """Parse one packet that arrived with `fds` file descriptors attached."""
    if len(data) > MAX_MESSAGE_BYTES:
        raise HandoverProtocolError(f"message of {len(data)} bytes is too large")
    try:
        body = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        raise HandoverProtocolError(f"not a hand-over message: {data[:40]!r}") from None
    if not isinstance(body, dict) or body.get("magic") != MAGIC:
        raise HandoverProtocolError(f"not a nodemesh hand-over message: {data[:40]!r}")
    if body.get("version") != VERSION:
        raise HandoverProtocolError(
            f"hand-over protocol version {body.get('version')!r}, this agent speaks {VERSION}"
        )
    kind = body.get("type")
    if kind not in FIELDS:
        raise HandoverProtocolError(f"unknown hand-over message type {kind!r}")
    extra = set(body) - {"magic", "version", "type"} - FIELDS[kind]
    missing = FIELDS[kind] - set(body)
    if extra or missing:
        raise HandoverProtocolError(
            f"{kind}: unexpected fields {sorted(extra)} / missing fields {sorted(missing)}"
        )
    values: dict[str, Any] = {}
    for name in ("pid", "pods"):
        if name in body:
            value = body[name]
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise HandoverProtocolError(f"{kind}: {name} must be a non-negative integer")
            values[name] = value
    if "reason" in body:
        if not isinstance(body["reason"], str):
            raise HandoverProtocolError(f"{kind}: reason must be a string")
        values["reason"] = body["reason"][:500]
    if "last" in body:
        if not isinstance(body["last"], bool):
            raise HandoverProtocolError(f"{kind}: last must be true or false")
        values["last"] = body["last"]
    if "netns" in body:
        if not isinstance(body["netns"], str):
            raise HandoverProtocolError(f"{kind}: netns must be a string")
        values["netns"] = body["netns"]
    entries: tuple[SocketEntry, ...] = ()
    if "entries" in body:
        if not isinstance(body["entries"], list) or len(body["entries"]) > MAX_FDS_PER_MESSAGE:
            raise HandoverProtocolError(f"{kind}: entries must be a list of at most 200")
        entries = tuple(SocketEntry.from_json(e) for e in body["entries"])
    if fds != len(entries):
        raise HandoverProtocolError(
            f"{kind} names {len(entries)} socket(s) but {fds} file descriptor(s) came with it"
        )
    return Message(type=kind, entries=entries, **values)


class Conversation:
    """One side's view of the exchange: checks each received message is the one due next."""

    def __init__(self, side: str) -> None:
        if side not in ("predecessor", "successor"):
            raise ValueError(side)
        self.side = side
        self.last: str | None = None

    def received(self, msg: Message) -> Message:
        if msg.type == "REFUSED":
            raise HandoverProtocolError(f"the other agent refused the hand-over: {msg.reason}")
        state = self.last
        allowed = NEXT.get((self.side, state), frozenset())
        if msg.type not in allowed:
            after = f"after {state}" if state else "first"
            want = " or ".join(sorted(allowed)) or "nothing"
            raise HandoverProtocolError(f"{msg.type} {after}: expected {want}")
        self.last = msg.type
        return msg


def chunks(entries: list[SocketEntry]) -> list[tuple[SocketEntry, ...]]:
    """Split the entries into messages small enough for one SCM_RIGHTS each (at least one)."""
    parts = [
        tuple(entries[i : i + MAX_FDS_PER_MESSAGE])
        for i in range(0, len(entries), MAX_FDS_PER_MESSAGE)
    ]
    return parts or [()]
