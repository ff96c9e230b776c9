"""Fresh keys and CSRs for the identity client, made by a short-lived child process.

`cryptography` maps ~10 MB into a process that imports it and the agent needs it only to make
a key and a CSR once per certificate (every ~16 h per identity), so the agent asks
`python -m nodemesh.keymaker` for a whole batch at once (one child per batch of renewals,
~0.2 s of CPU) and never imports it. Keys pass through the child's stdout pipe only.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from dataclasses import dataclass

KEYMAKER = (sys.executable, "-m", "nodemesh.keymaker")
TIMEOUT = 30.0


class KeygenError(OSError):
    """The key maker could not be run or gave no usable answer."""


@dataclass(frozen=True)
class KeyAndCsr:
    key_pem: bytes
    csr_pem: bytes


async def make_keys(
    identities: list[str], *, command: tuple[str, ...] = KEYMAKER, timeout: float = TIMEOUT
) -> dict[str, KeyAndCsr | str]:
    """A key + CSR for each identity, or the reason (str) the key maker refused it."""
    if not identities:
        return {}
    request = json.dumps(identities).encode()
    try:
        # subprocess (vfork + exec) in a thread, not the event loop's subprocess support: with
        # uvloop's (fork + exec) the lab's agent saw its child gone before its stdin was written
        # (cause not found: not reproduced outside the lab's containers); this way works there.
        proc = await asyncio.to_thread(
            subprocess.run, command, input=request, capture_output=True, timeout=timeout
        )
    except subprocess.TimeoutExpired:
        raise KeygenError(f"the key maker took more than {timeout:.0f}s") from None
    except (OSError, subprocess.SubprocessError) as exc:
        raise KeygenError(f"cannot run the key maker: {exc}") from exc
    out, err = proc.stdout, proc.stderr
    if proc.returncode != 0:
        tail = err.decode(errors="replace").strip().splitlines()[-1:] or ["no message"]
        raise KeygenError(f"the key maker exited with {proc.returncode}: {tail[0]}")
    try:
        doc = json.loads(out)
        result: dict[str, KeyAndCsr | str] = {}
        for identity in identities:
            entry = doc[identity]
            if "error" in entry:
                result[identity] = str(entry["error"])
            else:
                result[identity] = KeyAndCsr(entry["key_pem"].encode(), entry["csr_pem"].encode())
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise KeygenError(f"the key maker's answer is unreadable: {exc!r}") from exc
    return result
