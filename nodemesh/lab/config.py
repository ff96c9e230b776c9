"""A lab's settings, written by `lab up` and read by its supervisor (lab.json)."""

from __future__ import annotations

import json
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

_FORWARD = re.compile(
    r"^(?:(?P<host>[0-9.]+):)?(?P<local>\d+):(?P<ns>[a-z0-9-]+)/(?P<svc>[a-z0-9-]+):(?P<port>\d+)$"
)


class ForwardError(ValueError):
    pass


@dataclass(frozen=True)
class Forward:
    """Local address -> a Service port inside the lab."""

    host: str
    local_port: int
    namespace: str
    service: str
    port: int

    @classmethod
    def parse(cls, text: str) -> Forward:
        m = _FORWARD.match(text)
        if not m:
            raise ForwardError(
                f"--forward {text!r}: expected [HOST:]LOCALPORT:NAMESPACE/SERVICE:PORT, "
                "e.g. 8080:emojivoto/web-svc:80"
            )
        local, port = int(m["local"]), int(m["port"])
        for what, value, low in (("local port", local, 0), ("service port", port, 1)):
            if not low <= value <= 65535:
                raise ForwardError(f"--forward {text!r}: {what} {value} is not from {low} to 65535")
        return cls(m["host"] or "127.0.0.1", local, m["ns"], m["svc"], port)

    def __str__(self) -> str:
        return f"{self.host}:{self.local_port} -> {self.namespace}/{self.service}:{self.port}"


@dataclass
class LabConfig:
    name: str
    nodes: int = 2
    mesh: bool = False
    forwards: list[Forward] = field(default_factory=list)

    def save(self, path: Path) -> None:
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(json.dumps(asdict(self), indent=2))
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: Path) -> LabConfig:
        data: dict[str, Any] = json.loads(path.read_text())
        data["forwards"] = [Forward(**f) for f in data.get("forwards", [])]
        return cls(**data)
