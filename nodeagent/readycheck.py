"""The agent container's readiness probe (exec): ready only when the admin port that answers
/ready is this container's own.

The agent runs with hostNetwork. During a rollout the new agent pod starts beside the old one, and
until the old agent has handed its sockets over (nodeagent.handover), 127.0.0.1:4191 is the OLD
agent's: an httpGet probe of the new pod gets the old agent's 200 and the new pod is "ready" too
early, so the old one is stopped before the hand-over (seen in the lab under load: the rollout
went on while the new agent was still starting). This check first looks for the listening socket
of the admin port among the open files of the processes it can see, which are this container's
(its own PID namespace and /proc); the new agent holds it only once it has taken it over. Then
it asks /ready. Stdlib only: `python3 -m nodeagent.readycheck [--port 4191]`.
"""

from __future__ import annotations

import argparse
import http.client
import os
import sys

LISTEN = "0A"


def listening_inodes(port: int) -> set[str]:
    """Socket inodes of TCP listeners on `port` in this network namespace."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                next(f)
                for line in f:
                    fields = line.split()
                    if fields[3] == LISTEN and int(fields[1].rsplit(":", 1)[1], 16) == port:
                        inodes.add(fields[9])
        except OSError:
            continue
    return inodes


def held_here(inodes: set[str]) -> bool:
    """Whether a process visible here (this container's, in its PID namespace) holds one."""
    wanted = {f"socket:[{i}]" for i in inodes}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                if os.readlink(f"/proc/{pid}/fd/{fd}") in wanted:
                    return True
            except OSError:
                continue
    return False


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m nodeagent.readycheck")
    parser.add_argument("--port", type=int, default=4191)
    parser.add_argument("--timeout", type=float, default=3.0)
    args = parser.parse_args(argv)
    if not held_here(listening_inodes(args.port)):
        print(f"not ready: port {args.port} is not this container's agent's (yet)")
        return 1
    conn = http.client.HTTPConnection("127.0.0.1", args.port, timeout=args.timeout)
    try:
        conn.request("GET", "/ready")
        resp = conn.getresponse()
        print(resp.read().decode(errors="replace").strip())
        return 0 if resp.status == 200 else 1
    except (OSError, http.client.HTTPException) as e:
        print(f"not ready: {e}")
        return 1
    finally:
        conn.close()


if __name__ == "__main__":
    sys.exit(main())
