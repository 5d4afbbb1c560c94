"""Where a container's EGRESS_* values come from: inline, a ConfigMap key through
`valueFrom.configMapKeyRef` or `envFrom`, or a ConfigMap mounted as `EGRESS_DESTINATION_FILE`.

A value is resolved only when its ConfigMap is among the files given to `lint`; otherwise it is
`None`, and checks that need it are skipped rather than guessed. An `envFrom` that lint cannot
read (a Secret, a ConfigMap in no file given) may set any variable: the environment is then
`opaque`, and a variable not seen set may still be set (`Env.maybe`).
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass, field

from yaml.nodes import Node

from . import nodes
from .nodes import Document

# Marks a variable that is set, but from something lint cannot see (a Secret, the downward
# API, a ConfigMap in no file given).
UNKNOWN = object()


@dataclass(frozen=True)
class Value:
    text: str
    node: Node  # the scalar holding the text, in `path`
    path: str
    origin: str  # what to call it in a message: the variable, or "ConfigMap x key y"


@dataclass
class Env:
    values: dict[str, Value] = field(default_factory=dict)
    unknown: set[str] = field(default_factory=set)
    names: dict[str, Node] = field(default_factory=dict)  # variable -> the entry that sets it
    opaque: bool = False  # an envFrom source lint cannot read may set any variable

    def maybe(self, name: str) -> bool:
        """Whether `name` may be set to a value lint cannot see."""
        return name in self.unknown or (self.opaque and name not in self.values)


@dataclass(frozen=True)
class ConfigMaps:
    docs: list[Document]

    def key(self, name: str | None, key: str | None, namespace: str | None) -> Value | None:
        for doc in self._named(name, namespace):
            node = nodes.get(nodes.get(doc.root, "data"), key or "")
            if node is not None and nodes.text(node) is not None:
                return Value(nodes.text(node) or "", node, doc.path, f"ConfigMap {name} key {key}")
        return None

    def data(self, name: str | None, namespace: str | None) -> list[tuple[str, Node, str]] | None:
        for doc in self._named(name, namespace):
            return [(k, v, doc.path) for k, v in nodes.pairs(nodes.get(doc.root, "data"))]
        return None

    def _named(self, name: str | None, namespace: str | None) -> list[Document]:
        # A ConfigMap without a namespace is taken to be in the workload's: both are usually
        # applied with `kubectl -n`.
        return [
            d
            for d in self.docs
            if d.kind == "ConfigMap" and d.name == name and d.namespace in (None, namespace)
        ]


def environment(container: Node, maps: ConfigMaps, namespace: str | None, path: str) -> Env:
    env = Env()
    for source in nodes.items(nodes.get(container, "envFrom")):
        ref = nodes.get(source, "configMapRef")
        prefix = nodes.text(nodes.get(source, "prefix")) or ""
        data = maps.data(nodes.text(nodes.get(ref, "name")), namespace) if ref is not None else None
        if data is None:
            unreadable = ref is not None or nodes.get(source, "secretRef") is not None
            if unreadable and ("EGRESS_".startswith(prefix) or prefix.startswith("EGRESS_")):
                # It may set any EGRESS_* variable, and overrides the envFrom sources before it.
                env.opaque = True
                env.unknown.update(env.values)
                env.values.clear()
            continue
        for key, node, map_path in data:
            if (prefix + key).startswith("EGRESS_") and nodes.text(node) is not None:
                name = prefix + key
                env.values[name] = Value(nodes.text(node) or "", node, map_path, name)
                env.names[name] = node
                env.unknown.discard(name)
    for entry in nodes.items(nodes.get(container, "env")):
        named = nodes.text(nodes.get(entry, "name"))
        if named is None:
            continue
        name = named
        env.names[name] = entry
        env.values.pop(name, None)
        env.unknown.discard(name)
        value = nodes.get(entry, "value")
        ref = nodes.get(nodes.get(entry, "valueFrom"), "configMapKeyRef")
        if value is not None:
            env.values[name] = Value(nodes.text(value) or "", value, path, name)
        elif ref is not None:
            found = maps.key(nodes.text(nodes.get(ref, "name")), nodes.text(nodes.get(ref, "key")), namespace)
            if found is None:
                env.unknown.add(name)
            else:
                env.values[name] = found
        elif nodes.get(entry, "valueFrom") is not None:
            env.unknown.add(name)
        else:
            env.values[name] = Value("", entry, path, name)  # `- name: X` alone: set, empty
    return env


def mounted_file(path: str, container: Node, pod: Node, maps: ConfigMaps, namespace: str | None) -> Value | None | object:
    """The ConfigMap key mounted at `path`: a `Value`, `UNKNOWN`, or None (nothing mounted there)."""
    volumes = {nodes.text(nodes.get(v, "name")): v for v in nodes.items(nodes.get(pod, "volumes"))}
    for mount in nodes.items(nodes.get(container, "volumeMounts")):
        target = posixpath.normpath(nodes.text(nodes.get(mount, "mountPath")) or "/")
        sub = nodes.text(nodes.get(mount, "subPath"))
        if sub is not None:
            relative = sub if posixpath.normpath(path) == target else None
        elif path.startswith(target.rstrip("/") + "/"):
            relative = path[len(target.rstrip("/")) + 1 :]
        else:
            relative = None
        if relative is None:
            continue
        volume = volumes.get(nodes.text(nodes.get(mount, "name")))
        config_map = nodes.get(volume, "configMap")
        if config_map is None:
            return UNKNOWN  # a Secret, an emptyDir, ...: not ours to read
        key = relative
        for item in nodes.items(nodes.get(config_map, "items")):
            if nodes.text(nodes.get(item, "path")) == relative:
                key = nodes.text(nodes.get(item, "key")) or relative
        found = maps.key(nodes.text(nodes.get(config_map, "name")), key, namespace)
        return UNKNOWN if found is None else found
    return None
