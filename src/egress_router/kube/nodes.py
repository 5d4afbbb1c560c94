"""YAML read as PyYAML's node graph, so that every value keeps the line it came from.

`yaml.compose_all` resolves tags (a bare `true` gets the bool tag, `"true"` the str tag) but
builds no Python objects: exactly what `lint` needs to say both *what* is wrong and *where*.
"""

from __future__ import annotations

from dataclasses import dataclass

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

STR = "tag:yaml.org,2002:str"
BOOL = "tag:yaml.org,2002:bool"


@dataclass(frozen=True)
class Document:
    path: str
    root: MappingNode

    @property
    def kind(self) -> str:
        return text(get(self.root, "kind")) or ""

    @property
    def name(self) -> str:
        return text(get(get(self.root, "metadata"), "name")) or ""

    @property
    def namespace(self) -> str | None:
        return text(get(get(self.root, "metadata"), "namespace"))


def load(path: str, stream: str) -> list[Document]:
    """Every mapping document of the stream; raises `yaml.YAMLError` (with a mark) if invalid."""
    return [Document(path, n) for n in yaml.compose_all(stream, Loader=yaml.SafeLoader) if isinstance(n, MappingNode)]


def line(node: Node | None) -> int:
    return 0 if node is None else node.start_mark.line + 1


def get(node: Node | None, key: str) -> Node | None:
    if not isinstance(node, MappingNode):
        return None
    for k, v in node.value:
        if isinstance(k, ScalarNode) and k.value == key:
            return v if isinstance(v, Node) else None
    return None


def key_node(node: Node | None, key: str) -> Node | None:
    """The key itself: the line to blame when its value is missing or empty."""
    if isinstance(node, MappingNode):
        for k, _ in node.value:
            if isinstance(k, ScalarNode) and k.value == key:
                return k
    return None


def items(node: Node | None) -> list[Node]:
    return list(node.value) if isinstance(node, SequenceNode) else []


def pairs(node: Node | None) -> list[tuple[str, Node]]:
    if not isinstance(node, MappingNode):
        return []
    return [(k.value, v) for k, v in node.value if isinstance(k, ScalarNode)]


def text(node: Node | None) -> str | None:
    """A scalar's text as written (whatever its type), or None."""
    return node.value if isinstance(node, ScalarNode) and node.tag != "tag:yaml.org,2002:null" else None


def is_true(node: Node | None) -> bool:
    return isinstance(node, ScalarNode) and node.tag == BOOL and node.value.lower() in ("true", "yes", "on")


def strings(node: Node | None) -> list[str]:
    return [t for t in (text(n) for n in items(node)) if t is not None]


def text_line(node: Node, number: int) -> int:
    """The file line of line `number` (1-based) of a scalar's value.

    Only a literal block (`|`) keeps its lines as written; any other style folds or escapes
    them, so the best place to point at is where the value starts.
    """
    if isinstance(node, ScalarNode) and node.style == "|":
        return node.start_mark.line + 1 + number
    return line(node)
