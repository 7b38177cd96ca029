"""``validate APP_YAML``: check the event bus parts of an app config, offline.

Every ``eventbus.*`` module (and the old ``infra.eventbus*`` names, each with a
deprecation note and counted in the summary: ``wfctl infra plan`` takes them for
cloud resources; ``upgrade-config`` rewrites them), every ``step.eventbus.*`` step
of a pipeline (``steps:`` and ``compensation:``) or of an HTTP route's inline
pipeline, and every
``trigger.eventbus.subscribe`` pipeline trigger goes through the decoder and the
constructors the plugin uses (EventBus.create_module, create_step,
parse_trigger_config); nothing connects to a broker. Then the references
between them: a ``broker_ref`` names a declared broker (or there is exactly one),
a consumer's ``stream_name`` a declared stream, a trigger's consumer a declared
consumer (unless the trigger declares its own with ``stream_name``), a consume
step's ``consumer`` a declared consumer.

What only the engine knows is not judged: ``${VAR}`` references in module
settings (the engine expands them) and ``{{ ... }}`` templates in step settings
(resolved per run). Each problem is one line, ``FILE:LINE: what: problem; fix``;
exit 1 when there is any, else exit 0 after ``FILE: ok: <counts>``.

    workflow-plugin-eventbus validate app.yaml
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import sys
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from .._proto import eventbus_pb2 as pb
from ..core.config import decode
from ..core.deadletter import DEAD_LETTER_STREAM
from ..core.errors import ConfigError, EventbusError
from ..core.names import (
    BROKER,
    CONSUME_STEP,
    CONSUMER,
    MODULE_ALIASES,
    MODULE_TYPES,
    PUBLISH_STEP,
    STEP_TYPES,
    STREAM,
    SUBSCRIBE,
    canonical_module_type,
)
from ..core.subjects import validate_subject
from ..engine.bus import EventBus
from ..engine.modules import Module
from ..engine.steps import create_step
from ..engine.trigger import ALIASES, parse_trigger_config
from ..plugin.servicer import InertSubscribeModule
from ..providers import test_doubles_allowed
from . import _located as loc

T = TypeVar("T")

ENV_REFERENCE = re.compile(r"\$\{[^}]*\}")  # expanded by the engine in module config
TEMPLATE = re.compile(r"\{\{.*?\}\}", re.DOTALL)  # resolved by the engine per step run
_MODULE_PREFIXES = ("eventbus.", "infra.eventbus")
_STEP_PREFIX = "step.eventbus."
_TRIGGER_PREFIX = "trigger.eventbus."


@dataclass(slots=True)
class Problem:
    line: int
    text: str
    note: bool = False  # reported, not a failure


@dataclass(slots=True)
class Entry:
    """One event bus module, step or trigger of the app config."""

    kind: str  # "module", "step" or "trigger"
    type_name: str  # as written
    name: str
    path: list[str | int]  # from the document's root to the entry's mapping
    config: Any

    @property
    def canonical(self) -> str:
        return canonical_module_type(self.type_name) if self.kind == "module" else self.type_name

    @property
    def where(self) -> str:
        return f'{self.canonical} "{self.name}"'


@dataclass(slots=True)
class Report:
    problems: list[Problem] = field(default_factory=list)
    counts: Counter[str] = field(default_factory=Counter)  # module type, "step", "trigger"
    deprecated: int = 0  # old module type names (notes, not failures)


def add_parser(sub: Any) -> None:
    parser: argparse.ArgumentParser = sub.add_parser(
        "validate",
        help="check the event bus modules, steps and triggers of an app config (offline)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("app", metavar="APP_YAML", help="the app config the engine runs")
    parser.set_defaults(func=run)


def run(ns: argparse.Namespace) -> int:
    shown = ns.app
    try:
        text = Path(ns.app).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = getattr(exc, "strerror", None) or str(exc)
        print(
            f"error: APP_YAML: cannot read {shown}: {reason}; pass the path of an app config",
            file=sys.stderr,
        )
        return 1
    report = asyncio.run(check(text))
    for problem in sorted(report.problems, key=lambda p: (p.line, p.note)):
        print(f"{shown}:{problem.line}: {'note: ' if problem.note else ''}{problem.text}")
    errors = sum(1 for p in report.problems if not p.note)
    if errors:
        print(f"{shown}: {_plural(errors, 'problem')}")
        return 1
    order = (("broker", BROKER), ("stream", STREAM), ("consumer", CONSUMER))
    parts = [_plural(report.counts.get(key, 0), word) for word, key in order]
    parts += [_plural(report.counts.get(key, 0), key) for key in ("step", "trigger")]
    old = report.deprecated
    upgrade = f"; {_plural(old, 'deprecated type')}: run upgrade-config {shown}" if old else ""
    print(f"{shown}: ok: {', '.join(parts)}{upgrade}")
    return 0


def _plural(count: int, word: str) -> str:
    return f"{count} {word}" if count == 1 else f"{count} {word}s"


async def check(text: str, *, environ: dict[str, str] | None = None) -> Report:
    """Every problem of the app config ``text`` (see the module docstring)."""
    report = Report()
    try:
        document = loc.load(text)
    except loc.YamlError as exc:
        report.problems.append(Problem(exc.line, f"not valid YAML: {exc.problem}"))
        return report
    for line, first, key in document.duplicates:
        report.problems.append(
            Problem(
                line,
                f"key {key!r} is given twice in this mapping (first on line {first}); the "
                "engine refuses that: keep one",
            )
        )
    if document.value is not None and not isinstance(document.value, dict):
        report.problems.append(
            Problem(1, "an app config is a mapping (modules:, pipelines:, ...); this is not one")
        )
        return report
    checker = _Checker(document, environ if environ is not None else dict(os.environ))
    await checker.run(report)
    return report


class _Checker:
    def __init__(self, document: loc.Document, environ: dict[str, str]) -> None:
        self.doc = document
        self.bus = EventBus(environ={}, test_doubles=test_doubles_allowed(environ))
        self.problems: list[Problem] = []
        self.brokers: dict[str, Entry] = {}  # declared, whether valid or not
        self.streams: dict[str, Entry] = {}  # stream name -> module
        self.consumers: dict[str, Entry] = {}  # durable name -> module
        self.broken: set[str] = set()  # durable names of consumer modules that failed
        self.deprecated = 0  # modules written with an old infra.eventbus* type

    # -- reporting -------------------------------------------------------------
    def _entry_node(self, entry: Entry) -> Any:
        return loc.find(self.doc.node, entry.path)

    def _config_line(self, entry: Entry, path: loc.Path) -> int:
        """The line of ``path`` in the entry's config, as far down as it is written
        (a missing key: the ``config:`` line; no config: the entry's first line)."""
        return loc.line_at(self._entry_node(entry), ["config", *path])

    def _add(self, entry: Entry, path: loc.Path, text: str, *, note: bool = False) -> None:
        """A problem at ``path`` inside the entry's config."""
        self.problems.append(Problem(self._config_line(entry, path), text, note))

    def _add_at(self, entry: Entry, key: str, text: str, *, note: bool = False) -> None:
        """A problem at ``key`` of the entry itself (``name``, ``type``)."""
        self.problems.append(Problem(loc.line_at(self._entry_node(entry), [key]), text, note))

    def _add_error(self, entry: Entry, exc: EventbusError, where: str) -> None:
        setting = exc.setting if isinstance(exc, ConfigError) else ""
        path = loc.setting_path(setting, where)
        self._add(entry, _yaml_key(entry, path), str(exc))

    # -- the walk ---------------------------------------------------------------
    async def run(self, report: Report) -> None:
        entries = list(self._entries())
        modules = [e for e in entries if e.kind == "module"]
        self._declare(modules)
        built: list[tuple[Entry, Module]] = []
        for entry in modules:
            module = self._module(entry)
            if module is not None:
                built.append((entry, module))
        for _, module in built:
            await module.init()  # registration only: no broker is contacted
        for entry, module in built:
            self._module_references(entry, module)
        for entry in entries:
            if entry.kind == "step":
                self._step(entry)
            elif entry.kind == "trigger":
                self._trigger(entry)
        for entry in entries:
            kind = entry.canonical if entry.kind == "module" else entry.kind
            report.counts["trigger" if kind == SUBSCRIBE else kind] += 1
        report.problems.extend(self.problems)
        report.deprecated = self.deprecated

    def _entries(self) -> Iterator[Entry]:
        root = self.doc.value if isinstance(self.doc.value, dict) else {}
        modules = root.get("modules")
        for i, module in enumerate(modules if isinstance(modules, list) else []):
            if isinstance(module, dict):
                kind = str(module.get("type") or "")
                if kind.startswith(_MODULE_PREFIXES) or kind == SUBSCRIBE:
                    name = str(module.get("name") or "")
                    yield Entry("module", kind, name, ["modules", i], module.get("config"))
        pipelines = root.get("pipelines")
        for name, pipeline in (pipelines if isinstance(pipelines, dict) else {}).items():
            if not isinstance(pipeline, dict):
                continue
            trigger = pipeline.get("trigger")
            if isinstance(trigger, dict) and str(trigger.get("type") or "").startswith(
                _TRIGGER_PREFIX
            ):
                path: list[str | int] = ["pipelines", name, "trigger"]
                kind = str(trigger["type"])
                yield Entry("trigger", kind, f"pipeline:{name}", path, trigger.get("config"))
            for section in ("steps", "compensation"):
                yield from _steps(pipeline.get(section), ["pipelines", name, section])
        workflows = root.get("workflows")
        for name, workflow in (workflows if isinstance(workflows, dict) else {}).items():
            routes = workflow.get("routes") if isinstance(workflow, dict) else None
            for i, route in enumerate(routes if isinstance(routes, list) else []):
                if not isinstance(route, dict):
                    continue
                base: list[str | int] = ["workflows", name, "routes", i]
                inline = route.get("pipeline")
                if isinstance(inline, dict):
                    yield from _steps(inline.get("steps"), [*base, "pipeline", "steps"])
                else:
                    yield from _steps(route.get("steps"), [*base, "steps"])

    def _declare(self, modules: list[Entry]) -> None:
        seen: dict[str, Entry] = {}
        for entry in modules:
            earlier = seen.get(entry.name)
            if earlier is not None:
                line = loc.line_of(self._entry_node(earlier))
                self._add_at(
                    entry,
                    "name",
                    f"{entry.where}: name: another event bus module (line {line}) has this "
                    "name; give each module its own name",
                )
            seen.setdefault(entry.name, entry)
            own = entry.config.get("name") if isinstance(entry.config, dict) else None
            if entry.canonical == BROKER:
                self.brokers.setdefault(entry.name, entry)
            elif entry.canonical == STREAM and isinstance(own, str):
                self.streams.setdefault(own, entry)
            elif entry.canonical == CONSUMER and isinstance(own, str):
                self.consumers.setdefault(own, entry)

    # -- modules ----------------------------------------------------------------
    def _module(self, entry: Entry) -> Module | None:
        if not entry.name:
            self._add_at(
                entry, "type", f"{entry.type_name} module: name: is required; give it a name"
            )
        if entry.type_name in MODULE_ALIASES:
            self._add_at(
                entry,
                "type",
                f"{entry.where}: type {entry.type_name} is deprecated: wfctl infra plan "
                "takes every infra.* module for a cloud resource; write "
                f"type: {entry.canonical} (the config stays the same; upgrade-config "
                "rewrites it)",
                note=True,
            )
            self.deprecated += 1
        if entry.canonical == SUBSCRIBE:
            self._add_at(
                entry,
                "type",
                f"{entry.where}: a subscribe trigger declared as a module does nothing; "
                "pipelines receive messages through a pipeline trigger: of this type",
                note=True,
            )
            self._build(entry, _inert(entry.name, entry.where), ENV_REFERENCE)
            return None
        if entry.canonical not in MODULE_TYPES:
            known = ", ".join([*MODULE_TYPES, *MODULE_ALIASES])
            self._add_at(
                entry,
                "type",
                f"module type {entry.type_name!r} is not provided by this plugin; use one "
                f"of: {known}",
            )
            return None
        module = self._build(
            entry,
            lambda cfg: self.bus.create_module(entry.type_name, entry.name, cfg),
            ENV_REFERENCE,
        )
        if module is None and entry.canonical == CONSUMER and isinstance(entry.config, dict):
            self.broken.add(str(entry.config.get("name")))
        return module

    def _module_references(self, entry: Entry, module: Module) -> None:
        config = module.config
        if not isinstance(config, pb.StreamConfig | pb.ConsumerConfig):
            return  # a broker refers to nothing
        if not _templated(entry.config, "broker_ref", ENV_REFERENCE):
            self._broker_ref(entry, config.broker_ref, required=True)
        if isinstance(config, pb.ConsumerConfig):
            self._stream_name(entry, config.stream_name, ["stream_name"])

    def _broker_ref(self, entry: Entry, ref: str, *, required: bool, key: str = "") -> None:
        path = [key or "broker_ref"]
        names = ", ".join(sorted(self.brokers)) or "none"
        if ref and ref not in self.brokers:
            self._add(
                entry,
                path,
                f"{entry.where}: broker_ref: no eventbus.broker module is named {ref!r} "
                f"(declared: {names}); fix broker_ref or add that broker module",
            )
        elif not ref and not self.brokers:
            self._add(
                entry,
                path,
                f"{entry.where}: no eventbus.broker module is declared; add one "
                "(type: eventbus.broker) to the modules",
            )
        elif not ref and required and len(self.brokers) > 1:
            self._add(
                entry,
                path,
                f"{entry.where}: broker_ref: is required when several brokers are declared "
                f"({names}); set broker_ref to one of them",
            )

    def _stream_name(self, entry: Entry, stream: str, path: loc.Path) -> None:
        if not stream or stream in self.streams or stream == DEAD_LETTER_STREAM:
            return
        names = ", ".join(sorted(self.streams)) or "none"
        self._add(
            entry,
            path,
            f"{entry.where}: stream_name: no eventbus.stream declares stream {stream!r} "
            f"(declared: {names}); fix stream_name or add an eventbus.stream with "
            f"name: {stream}",
        )

    # -- steps and triggers -----------------------------------------------------
    def _step(self, entry: Entry) -> None:
        if entry.type_name not in STEP_TYPES:
            self._add_at(
                entry,
                "type",
                f"step type {entry.type_name!r} is not provided by this plugin; use one of: "
                f"{', '.join(STEP_TYPES)}",
            )
            return
        step = self._build(
            entry, lambda cfg: create_step(self.bus, entry.type_name, entry.name, cfg), TEMPLATE
        )
        if step is None:
            return
        config = step.config
        if config.broker_ref and not _templated(entry.config, "broker_ref", TEMPLATE):
            self._broker_ref(entry, config.broker_ref, required=False)
        elif not config.broker_ref and not self.brokers:
            self._broker_ref(entry, "", required=False)
        own = entry.config
        consumer = config.consumer if entry.type_name == CONSUME_STEP else ""
        subject = config.subject if entry.type_name == PUBLISH_STEP else ""
        if consumer and not _templated(own, "consumer", TEMPLATE):
            self._consumer(entry, consumer, "consumer")
        if subject and not _templated(own, "subject", TEMPLATE):
            self._subject(entry, subject)

    def _subject(self, entry: Entry, subject: str) -> None:
        try:
            validate_subject(subject, setting=f"{entry.where}: subject", wildcards=False)
        except ConfigError as exc:
            self._add(entry, ["subject"], str(exc))

    def _consumer(self, entry: Entry, durable: str, key: str) -> bool:
        if durable in self.consumers:
            return True
        names = ", ".join(sorted(self.consumers)) or "none"
        self._add(
            entry,
            [key],
            f"{entry.where}: {key}: no eventbus.consumer has durable name {durable!r} "
            f"(declared: {names}); fix {key} or add an eventbus.consumer with name: {durable}",
        )
        return False

    def _trigger(self, entry: Entry) -> None:
        if entry.type_name != SUBSCRIBE:
            self._add_at(
                entry,
                "type",
                f"trigger type {entry.type_name!r} is not provided by this plugin; use {SUBSCRIBE}",
            )
            return
        raw = entry.config if isinstance(entry.config, dict) else {}
        durable = raw.get("name") or raw.get("consumer")
        key = "name" if raw.get("name") else "consumer"
        if isinstance(durable, str) and durable in self.broken:
            return  # its consumer module's problem is reported already
        declares_own = bool(raw.get("stream_name"))  # the trigger declares its consumer
        named = durable if isinstance(durable, str) and not declares_own else ""
        if named and not self._consumer(entry, named, key):
            return
        cfg = self._build(
            entry, lambda cfg: parse_trigger_config(self.bus, cfg, instance=entry.name), None
        )
        if cfg is None:
            return
        ref_key = "broker_ref" if "broker_ref" in raw or "bus" not in raw else "bus"
        self._broker_ref(entry, cfg.broker_ref, required=True, key=ref_key)
        self._stream_name(entry, cfg.stream_name, ["stream_name"])

    # -- building through the plugin's own code ---------------------------------
    def _build(
        self, entry: Entry, build: Callable[[Any], T], runtime: re.Pattern[str] | None
    ) -> T | None:
        """``build(config)``, reporting its ConfigErrors.

        A key the decoder refuses is reported and left out for another try, so
        every refused key is reported; a key whose value the engine fills in at
        run time (``runtime``) is left out without a word. A problem the
        validators find after decoding ends the tries (they stop at the first)."""
        config = dict(entry.config) if isinstance(entry.config, dict) else entry.config
        if config is None:
            config = {}
        later = (
            {k for k in config if _templated(config, k, runtime)}
            if isinstance(config, dict) and runtime is not None
            else set()
        )
        for _ in range(len(config) + 2 if isinstance(config, dict) else 1):
            try:
                return build(config)
            except EventbusError as exc:
                setting = exc.setting if isinstance(exc, ConfigError) else ""
                path = loc.setting_path(setting, entry.where)
                key = _yaml_key(entry, path)[0] if path else None
                decoded = setting.startswith(f"{entry.where}.")
                if key in later and isinstance(config, dict):
                    if not decoded or key not in config:
                        return None  # about a value only the engine knows
                    config.pop(key)
                    continue
                self._add_error(entry, exc, entry.where)
                if not (decoded and isinstance(config, dict) and key in config):
                    return None
                config.pop(key)
        return None


def _yaml_key(entry: Entry, path: loc.Path) -> list[str | int]:
    """``path`` as written in the YAML: a trigger's error names the canonical key
    (``name``) where the config may use its alias (``consumer``)."""
    config = entry.config if isinstance(entry.config, dict) else {}
    if entry.kind == "trigger" and path and path[0] not in config:
        for alias, canonical in ALIASES.items():
            if canonical == path[0] and alias in config:
                return [alias, *path[1:]]
    return list(path)


def _steps(steps: Any, base: list[str | int]) -> Iterator[Entry]:
    for j, step in enumerate(steps if isinstance(steps, list) else []):
        if isinstance(step, dict) and str(step.get("type") or "").startswith(_STEP_PREFIX):
            name = str(step.get("name") or "")
            yield Entry("step", str(step["type"]), name, [*base, j], step.get("config"))


def _inert(name: str, where: str) -> Callable[[Any], InertSubscribeModule]:
    def build(config: Any) -> InertSubscribeModule:
        return InertSubscribeModule(name, decode(pb.ConsumerConfig, config, setting=where))

    return build


def _templated(config: Any, key: str, pattern: re.Pattern[str] | None) -> bool:
    """True when ``config[key]`` holds text ``pattern`` marks as filled in at run time."""
    if pattern is None or not isinstance(config, dict):
        return False
    return _has(config.get(key), pattern)


def _has(value: Any, pattern: re.Pattern[str]) -> bool:
    if isinstance(value, str):
        return bool(pattern.search(value))
    if isinstance(value, dict):
        return any(_has(v, pattern) for v in value.values())
    if isinstance(value, list):
        return any(_has(v, pattern) for v in value)
    return False
