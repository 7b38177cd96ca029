"""``upgrade-config APP_YAML [--write]``: rewrite old event bus names to today's.

The old module types ``infra.eventbus``, ``infra.eventbus.stream`` and
``infra.eventbus.consumer`` still run, but ``wfctl infra plan`` takes every
``infra.*`` module for a cloud resource and plans them (docs/iac.md). This
command writes them as ``eventbus.broker``, ``eventbus.stream`` and
``eventbus.consumer``, and a subscribe trigger's alias keys (``consumer:``,
``bus:``) as ``name:`` and ``broker_ref:``.

Only those words change: the file is edited in place at the positions ruamel.yaml
reports, so comments, order, quoting and blank lines stay byte for byte. Without
``--write`` it prints each change (``FILE:LINE: old -> new``) and the diff; with
``--write`` it saves the file; with ``--check`` it exits 1 when there is anything
to change (CI). Otherwise exit 0, and 1 when the file cannot be read or parsed, or
writes an old name in a form this command cannot edit in place (a tag, an escape:
nothing is written then; change it by hand). Line endings (LF or CRLF) are kept. A
trigger that gives both an alias and its key is reported and left as it is (the
key wins at run time; delete the alias).

    workflow-plugin-eventbus upgrade-config app.yaml
    workflow-plugin-eventbus upgrade-config app.yaml --write
    workflow-plugin-eventbus upgrade-config app.yaml --check
"""

from __future__ import annotations

import argparse
import difflib
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..core.errors import ConfigError
from ..core.names import MODULE_ALIASES, SUBSCRIBE
from ..engine.trigger import ALIASES

if TYPE_CHECKING:
    from ruamel.yaml import YAML
    from ruamel.yaml.comments import CommentedMap

_ALIGNED_COMMENT = re.compile(r"( {3,})#")  # spaces that line a comment up with others


@dataclass(frozen=True, slots=True)
class Edit:
    """Replace ``old`` by ``new`` at 0-based ``line``/``col`` of the text."""

    line: int
    col: int
    old: str
    new: str
    what: str  # "type" or "key"
    path: tuple[str | int, ...]  # of the mapping holding it, from the root


@dataclass(slots=True)
class Upgrade:
    text: str  # the upgraded file
    edits: list[Edit]
    notes: list[tuple[int, str]]  # 1-based line, text: left for a person


def add_parser(sub: Any) -> None:
    parser: argparse.ArgumentParser = sub.add_parser(
        "upgrade-config",
        help="rewrite old infra.eventbus* module names (and trigger alias keys) to today's",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("app", metavar="APP_YAML", help="the app config to upgrade")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--write", action="store_true", help="save the upgraded file in place")
    mode.add_argument(
        "--check", action="store_true", help="exit 1 when there is something to upgrade (CI)"
    )
    parser.set_defaults(func=run)


def run(ns: argparse.Namespace) -> int:
    from ruamel.yaml.error import YAMLError  # on use: the plugin process never needs it

    path = Path(ns.app)
    try:
        with path.open(encoding="utf-8", newline="") as file:  # CRLF stays CRLF
            text = file.read()
        result = upgrade(text)
    except (OSError, UnicodeDecodeError) as exc:
        reason = getattr(exc, "strerror", None) or str(exc)
        print(f"error: APP_YAML: cannot read {ns.app}: {reason}", file=sys.stderr)
        return 1
    except YAMLError as exc:
        problem = " ".join(str(exc).split())
        print(f"error: APP_YAML: {ns.app} is not valid YAML: {problem}", file=sys.stderr)
        return 1
    except ConfigError as exc:
        print(f"error: APP_YAML: {ns.app}: {exc}", file=sys.stderr)
        return 1
    for edit in result.edits:
        print(f"{ns.app}:{edit.line + 1}: {edit.what} {edit.old} -> {edit.new}")
    for line, note in result.notes:
        print(f"{ns.app}:{line}: note: {note}")
    if not result.edits:
        print(f"{ns.app}: nothing to upgrade")
        return 0
    if ns.check:
        print(f"{ns.app}: {len(result.edits)} change(s) to make; run upgrade-config --write")
        return 1
    if ns.write:
        with path.open("w", encoding="utf-8", newline="") as file:  # the bytes read, edited
            file.write(result.text)
        print(f"{ns.app}: {len(result.edits)} change(s) written")
        return 0
    diff = difflib.unified_diff(
        text.splitlines(keepends=True),
        result.text.splitlines(keepends=True),
        fromfile=ns.app,
        tofile=f"{ns.app} (upgraded)",
    )
    sys.stdout.writelines(diff)
    print(f"{ns.app}: {len(result.edits)} change(s); rerun with --write to save them")
    return 0


def upgrade(text: str) -> Upgrade:
    """The edits that bring ``text`` to today's names, and the text after them."""
    from ruamel.yaml import YAML
    from ruamel.yaml.comments import CommentedMap, CommentedSeq

    yaml = YAML(typ="rt")
    root = yaml.load(text)
    edits: list[Edit] = []
    notes: list[tuple[int, str]] = []
    if isinstance(root, CommentedMap):
        modules = root.get("modules")
        if isinstance(modules, CommentedSeq):
            for i, module in enumerate(modules):
                if isinstance(module, CommentedMap):
                    _module_type(module, ("modules", i), edits)
        pipelines = root.get("pipelines")
        if isinstance(pipelines, CommentedMap):
            for name, pipeline in pipelines.items():
                trigger = pipeline.get("trigger") if isinstance(pipeline, CommentedMap) else None
                if isinstance(trigger, CommentedMap) and trigger.get("type") == SUBSCRIBE:
                    config = trigger.get("config")
                    if isinstance(config, CommentedMap):
                        path = ("pipelines", str(name), "trigger", "config")
                        _trigger_keys(config, path, edits, notes)
    upgraded = _apply(text, edits)
    _check(yaml, upgraded, root, edits)
    return Upgrade(upgraded, sorted(edits, key=lambda e: (e.line, e.col)), notes)


def _module_type(module: CommentedMap, path: tuple[str | int, ...], edits: list[Edit]) -> None:
    old = module.get("type")
    if isinstance(old, str) and old in MODULE_ALIASES:
        line, col = module.lc.value("type")
        edits.append(Edit(line, col, old, MODULE_ALIASES[old], "type", path))


def _trigger_keys(
    config: CommentedMap,
    path: tuple[str | int, ...],
    edits: list[Edit],
    notes: list[tuple[int, str]],
) -> None:
    for alias, key in ALIASES.items():
        if alias not in config:
            continue
        line, col = config.lc.key(alias)
        if key in config:
            notes.append(
                (
                    line + 1,
                    f"trigger config gives both {alias}: and {key}:; {key}: wins, delete {alias}:",
                )
            )
            continue
        edits.append(Edit(line, col, alias, key, "key", path))


def _apply(text: str, edits: list[Edit]) -> str:
    lines = text.splitlines(keepends=True)
    # Right to left on a line, so earlier columns stay where ruamel saw them.
    for edit in sorted(edits, key=lambda e: (e.line, e.col), reverse=True):
        line = lines[edit.line]
        start = edit.col + (1 if line[edit.col : edit.col + 1] in ("'", '"') else 0)
        if line[start : start + len(edit.old)] != edit.old:
            raise _cannot_edit(edit, f"is not written as plain text at column {start + 1}")
        rest = _keep_comment_column(line[start + len(edit.old) :], len(edit.new) - len(edit.old))
        lines[edit.line] = line[:start] + edit.new + rest
    return "".join(lines)


def _keep_comment_column(rest: str, delta: int) -> str:
    """A comment lined up with 3+ spaces after the edit stays in its column (2 spaces kept
    at least); one after the usual two spaces stays two spaces after the value."""
    gap = _ALIGNED_COMMENT.search(rest)
    if gap is None or delta == 0:
        return rest
    width = max(2, len(gap.group(1)) - delta)
    return rest[: gap.start(1)] + " " * width + rest[gap.end(1) :]


def _check(yaml: YAML, upgraded: str, before: Any, edits: list[Edit]) -> None:
    """The upgraded text must parse to the old document with exactly the edits made."""
    if not edits:
        return  # the text is the one read
    expected = _plain(before)
    for edit in edits:
        _rename(expected, edit)
    if _plain(yaml.load(upgraded)) != expected:
        first = min(edits, key=lambda e: (e.line, e.col))  # some edit hit the wrong text
        raise _cannot_edit(first, "edited in place would change more than the name")


def _cannot_edit(edit: Edit, problem: str) -> ConfigError:
    return ConfigError(
        f"line {edit.line + 1}: {edit.what}",
        f"{edit.old} {problem} (a tag, an escape or another YAML form this command "
        "cannot edit in place); nothing was changed",
        value=edit.old,
        fix=f"change {edit.old} to {edit.new} by hand, or write it as plain text and rerun",
    )


def _rename(root: Any, edit: Edit) -> None:
    """Apply ``edit`` to the plain copy of the document."""
    node = root
    for step in edit.path:
        node = node[step]
    if edit.what == "type":
        node["type"] = edit.new
    else:
        node[edit.new] = node.pop(edit.old)


def _plain(node: Any) -> Any:
    from ruamel.yaml.comments import TaggedScalar  # compares by identity otherwise

    if isinstance(node, TaggedScalar):
        return ("tagged", str(node.tag), node.value)
    if isinstance(node, dict):
        return {str(k): _plain(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_plain(v) for v in node]
    return node
