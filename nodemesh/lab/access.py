"""The lab's users and grants, as a cluster has them: bearer tokens for the lab admin (the CLI
as root on the host) and for service accounts that need one (the dashboard), and RBAC-shaped
roles and bindings, all in a root-only directory the control plane reads (--access-file).

access.json: {"users": [{"token_sha256", "username", "groups"}], "roles": {name: [rule]},
"bindings": [{"role", "subjects": [{"kind": User|Group|ServiceAccount, "name", "namespace"?}],
"namespace"?}]}. Tokens are stored only hashed there; the tokens themselves are in
admin.token and serviceaccounts/<ns>/<name>/token. Lab pods get no token.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
from pathlib import Path
from typing import Any

from nodemesh.access import DASHBOARD_ROLES, ROLES, STATS_ROLE, TAP_ROLE

ADMIN_USER = "lab-admin"
ADMIN_GROUP = "nodemesh:lab-admins"
ACCESS_FILE = "access.json"
ADMIN_TOKEN_FILE = "admin.token"
# Service accounts of the lab's mesh manifest that call the public API.
TOKEN_ACCOUNTS = (("nodemesh", "nodemesh-dashboard"),)


def _write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.rename(tmp, path)


def service_account_token_path(directory: Path, namespace: str, name: str) -> Path:
    return directory / "serviceaccounts" / namespace / name / "token"


def create_lab_access(directory: str | os.PathLike[str]) -> dict[str, Any]:
    """Write fresh tokens and the grant table; returns the table."""
    base = Path(directory)
    base.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(base, 0o700)
    users = []
    admin = secrets.token_urlsafe(32)
    _write(base / ADMIN_TOKEN_FILE, admin.encode() + b"\n")
    users.append(_user(admin, ADMIN_USER, [ADMIN_GROUP, "system:authenticated"]))
    bindings: list[dict[str, Any]] = [
        {"role": role, "subjects": [{"kind": "Group", "name": ADMIN_GROUP}]}
        for role in (TAP_ROLE, STATS_ROLE)
    ]
    for namespace, name in TOKEN_ACCOUNTS:
        token = secrets.token_urlsafe(32)
        _write(service_account_token_path(base, namespace, name), token.encode() + b"\n")
        username = f"system:serviceaccount:{namespace}:{name}"
        groups = ["system:serviceaccounts", f"system:serviceaccounts:{namespace}"]
        users.append(_user(token, username, groups + ["system:authenticated"]))
        subject = {"kind": "ServiceAccount", "namespace": namespace, "name": name}
        bindings += [{"role": role, "subjects": [subject]} for role in DASHBOARD_ROLES]
    table = {
        "users": users,
        "roles": {name: [r.as_dict() for r in rules] for name, rules in ROLES.items()},
        "bindings": bindings,
    }
    _write(base / ACCESS_FILE, json.dumps(table, indent=2).encode() + b"\n")
    return table


def _user(token: str, username: str, groups: list[str]) -> dict[str, Any]:
    digest = hashlib.sha256(token.encode()).hexdigest()
    return {"token_sha256": digest, "username": username, "groups": groups}
