"""The files of configMap, secret, downwardAPI and projected volumes, as a kubelet writes them.

Sans-io: objects come from `get` (the lab's store) and service-account tokens from `token`
(namespace, account, audience, pod); what cannot be found is a ContainerConfigError naming it,
as a kubelet's CreateContainerConfigError would (unless the source is `optional`).
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from typing import Any

from nodemesh.lab.container import ContainerConfigError
from nodemesh.lab.manifests import ObjectRef

Files = dict[str, tuple[bytes, int]]
Get = Callable[[ObjectRef], dict[str, Any] | None]
Token = Callable[[str, str, str, dict[str, Any]], str]


def _mode(value: Any, default: int) -> int:
    return int(value) if value is not None else default


def _keys(obj: dict[str, Any], *, secret: bool) -> dict[str, bytes]:
    if secret:
        out = {k: base64.b64decode(v) for k, v in (obj.get("data") or {}).items()}
        out.update({k: str(v).encode() for k, v in (obj.get("stringData") or {}).items()})
        return out
    out = {k: str(v).encode() for k, v in (obj.get("data") or {}).items()}
    out.update({k: base64.b64decode(v) for k, v in (obj.get("binaryData") or {}).items()})
    return out


def _from_object(
    source: dict[str, Any], *, kind: str, namespace: str, get: Get, default_mode: int, where: str
) -> Files:
    secret = kind == "Secret"
    name = source.get("secretName" if secret and "secretName" in source else "name", "")
    obj = get(ObjectRef(kind, namespace, name))
    if obj is None:
        if source.get("optional"):
            return {}
        raise ContainerConfigError(f"{where}: {kind.lower()} {namespace}/{name!r} not found")
    data = _keys(obj, secret=secret)
    mode = _mode(source.get("defaultMode"), default_mode)
    items = source.get("items")
    if not items:
        return {k: (v, mode) for k, v in data.items()}
    files: Files = {}
    for item in items:
        if item["key"] not in data:
            if source.get("optional"):
                continue
            raise ContainerConfigError(
                f"{where}: key {item['key']!r} not in {kind.lower()} {namespace}/{name}"
            )
        files[item["path"]] = (data[item["key"]], _mode(item.get("mode"), mode))
    return files


def _field(pod: dict[str, Any], path: str, where: str) -> bytes:
    meta = pod["metadata"]
    fields = {
        "metadata.name": meta["name"],
        "metadata.namespace": meta["namespace"],
        "metadata.uid": meta.get("uid", ""),
        "spec.nodeName": pod["spec"].get("nodeName", ""),
        "spec.serviceAccountName": pod["spec"].get("serviceAccountName", "default"),
    }
    if path in ("metadata.labels", "metadata.annotations"):
        pairs = meta.get(path.split(".")[1]) or {}
        return "".join(f'{k}="{v}"\n' for k, v in sorted(pairs.items())).encode()
    if path not in fields:
        raise ContainerConfigError(f"{where}: fieldRef {path!r} is not supported by the lab")
    return str(fields[path]).encode()


def volume_files(pod: dict[str, Any], vol: dict[str, Any], *, get: Get, token: Token) -> Files:
    namespace = pod["metadata"]["namespace"]
    where = f"spec.volumes ({vol['name']})"
    if "configMap" in vol:
        return _from_object(vol["configMap"], kind="ConfigMap", namespace=namespace, get=get,
                            default_mode=0o644, where=where)  # fmt: skip
    if "secret" in vol:
        return _from_object(vol["secret"], kind="Secret", namespace=namespace, get=get,
                            default_mode=0o644, where=where)  # fmt: skip
    if "downwardAPI" in vol:
        return {
            i["path"]: (_field(pod, i["fieldRef"]["fieldPath"], where), 0o644)
            for i in vol["downwardAPI"].get("items") or []
        }
    projected = vol.get("projected") or {}
    mode = _mode(projected.get("defaultMode"), 0o644)
    files: Files = {}
    for source in projected.get("sources") or []:
        if "serviceAccountToken" in source:
            sat = source["serviceAccountToken"]
            account = pod["spec"].get("serviceAccountName") or "default"
            text = token(namespace, account, str(sat.get("audience") or ""), pod)
            # A token is readable by its owner only, whatever the defaultMode says.
            files[sat["path"]] = (text.encode(), 0o600)
        elif "configMap" in source or "secret" in source:
            kind = "ConfigMap" if "configMap" in source else "Secret"
            files.update(
                _from_object(source["configMap" if kind == "ConfigMap" else "secret"], kind=kind,
                             namespace=namespace, get=get, default_mode=mode, where=where)
            )  # fmt: skip
        elif "downwardAPI" in source:
            for i in source["downwardAPI"].get("items") or []:
                files[i["path"]] = (_field(pod, i["fieldRef"]["fieldPath"], where), mode)
        else:
            raise ContainerConfigError(f"{where}: projected source {sorted(source)} not supported")
    return files
