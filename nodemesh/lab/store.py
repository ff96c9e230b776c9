"""The lab's object store: Kubernetes-shaped objects in memory, mirrored as YAML files.

Each file is written as JSON, which is YAML (any YAML reader takes it), because the control
plane's local source parses JSON ~50x faster than YAML: at the scale bench's 50 pod changes a
second, parsing the YAML of each Pod and EndpointSlice took ~0.13 of a core of the control
plane's process (bench/results/controlplane-scale.md, fifth round). An object JSON cannot hold
(a timestamp a manifest left unquoted, which YAML reads as a date) is written as YAML.

Layout (what the control plane's local source reads): objects/<Kind>/<namespace>/<name>.yaml for
namespaced kinds, objects/<Kind>/<name>.yaml for cluster-scoped ones. Files are replaced
atomically (temp file + rename) so a reader never sees half an object.
"""

from __future__ import annotations

import copy
import json
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from nodemesh.lab.manifests import ObjectRef, ref_of


class Store:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._objects: dict[ObjectRef, dict[str, Any]] = {}
        self._version = 0

    def path_of(self, ref: ObjectRef) -> Path:
        if ref.namespace:
            return self.directory / ref.kind / ref.namespace / f"{ref.name}.yaml"
        return self.directory / ref.kind / f"{ref.name}.yaml"

    def get(self, ref: ObjectRef) -> dict[str, Any] | None:
        return self._objects.get(ref)

    def of_kind(self, kind: str, namespace: str | None = None) -> list[dict[str, Any]]:
        return [
            o
            for r, o in self._objects.items()
            if r.kind == kind and (namespace is None or r.namespace == namespace)
        ]

    def all(self) -> Iterator[dict[str, Any]]:
        yield from self._objects.values()

    def put(self, obj: dict[str, Any]) -> dict[str, Any]:
        """Store (create or replace) `obj`, giving it the next resourceVersion."""
        ref = ref_of(obj)
        self._version += 1
        obj["metadata"]["resourceVersion"] = str(self._version)
        self._objects[ref] = obj
        path = self.path_of(ref)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.parent / f".{path.name}.{os.getpid()}.tmp"
        tmp.write_text(encode(obj), encoding="utf-8")
        os.replace(tmp, path)
        return obj

    def delete(self, ref: ObjectRef) -> dict[str, Any] | None:
        obj = self._objects.pop(ref, None)
        try:
            os.unlink(self.path_of(ref))
        except FileNotFoundError:
            pass
        return obj

    def snapshot(self) -> list[dict[str, Any]]:
        return [copy.deepcopy(o) for o in self._objects.values()]


# Characters a YAML reader does not take raw as JSON leaves them (C1 controls, which include
# NEL, a line break to YAML; line and paragraph separators; lone surrogates). JSON's \u escapes
# of characters beyond the BMP (surrogate pairs) YAML refuses, so those are written raw.
_NOT_YAML = re.compile("[\x7f-\x9f\u2028\u2029\ud800-\udfff\ufffe\uffff]")


def encode(obj: dict[str, Any]) -> str:
    """An object's file: JSON (a YAML document), or YAML for what JSON cannot hold or what YAML
    would read back otherwise."""
    try:
        text = json.dumps(obj, indent=1, ensure_ascii=False, allow_nan=False) + "\n"
    except (TypeError, ValueError):
        return yaml.safe_dump(obj, sort_keys=False)
    if _NOT_YAML.search(text):
        return yaml.safe_dump(obj, sort_keys=False)
    return text
