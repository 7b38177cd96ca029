"""The folders are the layers, and imports only go down (DESIGN.md draws them).

core (pure rules) < providers < engine < plugin < devservers < bench < cli.
A module may import its own layer and the layers below, never one above; the
package's ``__init__`` (the public surface) may re-export from any layer.
"""

import ast
from pathlib import Path

import workflow_eventbus

SRC = Path(workflow_eventbus.__file__).parent
LAYERS = [
    "_proto",
    "_version",
    "core",
    "providers",
    "engine",
    "plugin",
    "devservers",
    "bench",
    "cli",
]
RANK = {name: i for i, name in enumerate(LAYERS)}
# Generated code and the version sit below everything.
RANK["_version"] = RANK["_proto"] = -1


def _layer_of(module: str) -> str:
    return module.split(".")[1] if module.count(".") >= 1 else ""


def _imports(path: Path) -> list[tuple[int, str]]:
    rel = path.relative_to(SRC.parent).with_suffix("")
    package = list(rel.parts[:-1])
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                target = ".".join([*base, *([node.module] if node.module else [])])
                if node.module is None:  # from . import a, b: submodules of base
                    found += [(node.lineno, f"{target}.{a.name}") for a in node.names]
                    continue
            else:
                target = node.module or ""
            found.append((node.lineno, target))
        elif isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
    return [(n, t) for n, t in found if t.startswith("workflow_eventbus.")]


def test_every_module_is_in_a_layer() -> None:
    for path in SRC.rglob("*.py"):
        rel = path.relative_to(SRC)
        if rel.parts == ("__init__.py",):
            continue
        assert rel.parts[0].removesuffix(".py") in RANK, f"{rel} is in no layer"


def test_no_import_from_a_higher_layer() -> None:
    bad = []
    for path in SRC.rglob("*.py"):
        rel = path.relative_to(SRC)
        if rel.parts == ("__init__.py",) or rel.parts[0] == "_proto":
            continue
        own = RANK[rel.parts[0].removesuffix(".py")]
        for line, target in _imports(path):
            layer = _layer_of(target)
            if layer == "" or layer not in RANK:
                bad.append(f"{rel}:{line} imports the package root {target}")
            elif RANK[layer] > own:
                bad.append(f"{rel}:{line} ({rel.parts[0]}) imports {target} ({layer})")
    assert bad == []


def test_no_provider_name_branches_outside_providers() -> None:
    # A provider is chosen through providers.REGISTRY, never by comparing its name.
    names = ("nats", "pgchannel", "memory", "kafka", "kinesis")
    needles = [f'{op} "{name}"' for name in names for op in ("==", "!=")]
    bad = []
    for path in SRC.rglob("*.py"):
        rel = path.relative_to(SRC)
        if rel.parts[0] in ("providers", "_proto"):
            continue
        text = path.read_text()
        bad += [f"{rel}: {n}" for n in needles if n in text]
    assert bad == []
