"""An app config as Python values plus the YAML line of each of its nodes.

PyYAML composes the document into nodes (each with ``start_mark.line``) and
then constructs the values from those nodes; :func:`load` keeps both, so a
problem found in the values can be reported at the line it was written on.
:func:`duplicate_keys` finds what PyYAML accepts and the engine's parser
(gopkg.in/yaml.v3) refuses: a key given twice in one mapping.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

Path = Sequence[str | int]  # keys and list indexes from some node down


@dataclass(frozen=True, slots=True)
class Document:
    value: Any
    node: Node | None  # None: an empty file
    duplicates: list[tuple[int, int, str]]  # see duplicate_keys


class YamlError(Exception):
    """The text is not YAML; ``line`` is 1-based (0 when unknown)."""

    def __init__(self, line: int, problem: str) -> None:
        super().__init__(problem)
        self.line = line
        self.problem = problem


def load(text: str) -> Document:
    """The document's values and its node tree (one document only)."""
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        # Before constructing: that rewrites mappings with merge keys (<<) in place.
        duplicates = list(duplicate_keys(node, set()))
        value = loader.construct_document(node) if node is not None else None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = mark.line + 1 if mark is not None else 0
        problem = " ".join(f"{exc.context or ''} {exc.problem or ''}".split())
        raise YamlError(where, problem or "not valid YAML") from exc
    except yaml.YAMLError as exc:
        raise YamlError(0, " ".join(str(exc).split())) from exc
    finally:
        loader.dispose()
    return Document(value, node, duplicates)


def line_of(node: Node | None) -> int:
    """1-based line where ``node`` starts (0 for None)."""
    return node.start_mark.line + 1 if node is not None else 0


def child(node: Node | None, step: str | int) -> tuple[Node | None, Node | None]:
    """(key node, value node) of ``step`` under ``node``; (None, None) when absent.

    For a list index the key node is the item itself."""
    if isinstance(node, MappingNode) and isinstance(step, str):
        found: tuple[Node | None, Node | None] = (None, None)
        for key, value in node.value:
            if isinstance(key, ScalarNode) and key.value == step:
                found = (key, value)  # the last one wins, as in the constructed value
        return found
    if isinstance(node, SequenceNode) and isinstance(step, int) and 0 <= step < len(node.value):
        item = node.value[step]
        return item, item
    return None, None


def find(node: Node | None, path: Path) -> Node | None:
    """The value node at ``path`` under ``node`` (None when it is not there)."""
    for step in path:
        _, node = child(node, step)
        if node is None:
            return None
    return node


def line_at(node: Node | None, path: Path) -> int:
    """The line of the deepest part of ``path`` that exists under ``node``: the key's
    line for a mapping entry, the item's for a list index, else ``node``'s own."""
    best = line_of(node)
    for step in path:
        key, value = child(node, step)
        if value is None:
            break
        best = line_of(key)
        node = value
    return best


_PATH_PART = re.compile(r"\[(\d+)\]|\[([^\]]+)\]|([^.\[\]/ ]+)")


def setting_path(setting: str, where: str) -> list[str | int]:
    """The config keys an error's ``setting`` names below ``where``.

    ``eventbus.consumer "c".backoff[1]`` (the decoder's form) and
    ``eventbus.consumer "c": backoff[1]`` (the validators') both give
    ``["backoff", 1]``; ``...: config[name]`` gives ``["name"]``."""
    if not setting.startswith(where):
        return []
    rest = setting[len(where) :].lstrip(".: ")
    rest = re.sub(r"^config\[([^\]]+)\]", r"\1", rest)
    parts: list[str | int] = []
    for index, bracketed, name in _PATH_PART.findall(rest):
        parts.append(int(index) if index else bracketed or name)
    return parts


def duplicate_keys(node: Node | None, seen_nodes: set[int]) -> Iterator[tuple[int, int, str]]:
    """(line, line of the first, key) for every key given twice in a mapping."""
    if node is None or id(node) in seen_nodes:
        return  # an alias of a node already looked at
    seen_nodes.add(id(node))
    if isinstance(node, MappingNode):
        seen: dict[str, int] = {}
        for key, value in node.value:
            if isinstance(key, ScalarNode) and key.tag != "tag:yaml.org,2002:merge":
                if key.value in seen:
                    yield line_of(key), seen[key.value], key.value
                else:
                    seen[key.value] = line_of(key)
            yield from duplicate_keys(value, seen_nodes)
    elif isinstance(node, SequenceNode):
        for item in node.value:
            yield from duplicate_keys(item, seen_nodes)
