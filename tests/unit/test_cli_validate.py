"""``validate APP_YAML``: every problem with its line, offline, through the plugin's decoder."""

from __future__ import annotations

from pathlib import Path

import pytest

from workflow_eventbus.cli._located import setting_path
from workflow_eventbus.cli.main import main
from workflow_eventbus.providers.nats import NatsProvider
from workflow_eventbus.providers.pgchannel import PgChannelProvider

ROOT = Path(__file__).resolve().parents[2]
SECRET = "val-Secr3t-07"


def run(tmp_path: Path, text: str, capsys: pytest.CaptureFixture[str]) -> tuple[int, list[str]]:
    path = tmp_path / "app.yaml"
    path.write_text(text)
    code = main(["validate", str(path)])
    out, err = capsys.readouterr()
    assert err == ""
    return code, [line.replace(str(path), "app.yaml") for line in out.splitlines()]


def line_of(text: str, needle: str, nth: int = 1) -> int:
    """1-based line of the nth line containing ``needle``."""
    hits = [i for i, line in enumerate(text.splitlines(), 1) if needle in line]
    return hits[nth - 1]


@pytest.fixture(autouse=True)
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """validate must never connect: any connect fails the test."""

    async def refuse(self: object, timeout: float) -> None:
        raise AssertionError("validate connected to a broker")

    monkeypatch.setattr(NatsProvider, "connect", refuse)
    monkeypatch.setattr(PgChannelProvider, "connect", refuse)
    monkeypatch.delenv("WORKFLOW_EVENTBUS_TEST_DOUBLES", raising=False)


@pytest.mark.parametrize(
    ("app", "summary"),
    [
        ("interop/apps/orders.yaml", "1 broker, 1 stream, 1 consumer, 2 steps, 1 trigger"),
        ("interop/apps/go-shapes.yaml", "1 broker, 1 stream, 1 consumer, 1 step, 1 trigger"),
        ("examples/eventbus-app.yaml", "1 broker, 1 stream, 1 consumer, 2 steps, 1 trigger"),
        ("examples/local.yaml", "1 broker, 1 stream, 1 consumer, 0 steps, 0 triggers"),
    ],
)
def test_the_real_app_configs_are_valid(
    app: str, summary: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["validate", str(ROOT / app)]) == 0
    out = capsys.readouterr().out.splitlines()
    old_names = "go-shapes" in app  # the pre-v0.2 type names: reported, not failed
    upgrade = f"; 3 deprecated types: run upgrade-config {ROOT / app}" if old_names else ""
    assert out[-1] == f"{ROOT / app}: ok: {summary}{upgrade}"
    problems = out[:-1]
    if old_names:
        text = (ROOT / app).read_text()
        assert problems == [
            f'{ROOT / app}:{line_of(text, "type: " + old)}: note: eventbus.{new} "{name}": type '
            f"{old} is deprecated: wfctl infra plan takes every infra.* module for a cloud "
            f"resource; write type: eventbus.{new} (the config stays the same; upgrade-config "
            "rewrites it)"
            for old, new, name in (
                ("infra.eventbus", "broker", "bus"),
                ("infra.eventbus.stream", "stream", "fulfillment-stream"),
                ("infra.eventbus.consumer", "consumer", "settlement-consumer"),
            )
        ]
    else:
        assert problems == []


BAD = f"""\
name: bad-app
modules:
  - name: bus
    type: eventbus.broker
    config:
      provider: nats
      deploy_target: moon_base
      dsn: "nats://alice:{SECRET}@127.0.0.1:4222"
  - name: orders
    type: eventbus.stream
    config:
      name: ORDERS
      subject: ["orders.>"]
      num_replicas: many
      broker_ref: bus
  - name: deriver
    type: eventbus.consumer
    config:
      name: deriver
      stream_name: ORDERS
      broker_ref: bus
      max_deliver: -5
  - name: lost
    type: eventbus.consumer
    config:
      name: lost
      stream_name: NOPE
      broker_ref: elsewhere
  - name: http
    type: http.server
    config: {{address: ":8080", whatever: 1}}

pipelines:
  derive:
    trigger:
      type: trigger.eventbus.subscribe
      config:
        consumer: ghost
    steps:
      - name: pub
        type: step.eventbus.publish
        config:
          subject: orders..derived
          colour: blue
      - name: take
        type: step.eventbus.consume
        config:
          consumer: nobody
      - name: typo
        type: step.eventbus.publsh
"""


def test_every_problem_with_its_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out = run(tmp_path, BAD, capsys)
    assert code == 1
    at = lambda needle: f"app.yaml:{line_of(BAD, needle)}: "  # noqa: E731
    expected = [
        at("deploy_target: moon_base")
        + 'eventbus.broker "bus": deploy_target: provider nats does not support this deploy '
        "target (got 'moon_base'); use one of: digitalocean.app_platform, aws.ecs, aws.eks, "
        "kubernetes, self_hosted",
        at("subject: [")
        + 'eventbus.stream "orders".subject: unknown key for StreamConfig; valid keys are: ',
        # The refused key left the stream without subjects: said at its config.
        f"app.yaml:{line_of(BAD, 'config:', 2)}: "
        + 'eventbus.stream "orders": subjects: must contain at least one entry; set subjects, '
        'e.g. subjects: ["orders.>"]',
        at("num_replicas: many")
        + "eventbus.stream \"orders\".num_replicas: expected an integer (got 'many'); write "
        "a whole number",
        at("max_deliver: -5")
        + 'eventbus.consumer "deriver": max_deliver: must be -1 (unlimited) or more (got -5)',
        at("stream_name: NOPE")
        + "eventbus.consumer \"lost\": stream_name: no eventbus.stream declares stream 'NOPE' "
        "(declared: ORDERS); fix stream_name or add an eventbus.stream with name: NOPE",
        at("broker_ref: elsewhere")
        + 'eventbus.consumer "lost": broker_ref: no eventbus.broker module is named '
        "'elsewhere' (declared: bus); fix broker_ref or add that broker module",
        at("consumer: ghost")
        + 'trigger.eventbus.subscribe "pipeline:derive": consumer: no eventbus.consumer has '
        "durable name 'ghost' (declared: deriver, lost); fix consumer or add an "
        "eventbus.consumer with name: ghost",
        at("colour: blue")
        + 'step.eventbus.publish "pub".colour: unknown key for PublishStepConfig; valid keys '
        "are: ",
        at("subject: orders..derived")
        + 'step.eventbus.publish "pub": subject: empty token (leading, trailing or double '
        "'.') (got 'orders..derived'); write tokens separated by single dots, e.g. "
        "orders.created",
        at("consumer: nobody")
        + 'step.eventbus.consume "take": consumer: no eventbus.consumer has durable name '
        "'nobody' (declared: deriver, lost); fix consumer or add an eventbus.consumer with "
        "name: nobody",
        at("type: step.eventbus.publsh")
        + "step type 'step.eventbus.publsh' is not provided by this plugin; use one of: "
        "step.eventbus.publish, step.eventbus.consume, step.eventbus.ack",
    ]
    expected.sort(key=lambda text: int(text.split(":")[1]))
    assert len(out) == len(expected) + 1
    for got, want in zip(out, expected, strict=False):
        assert got.startswith(want), (got, want)
    # The stream's two refused keys are both reported, then the stream itself is checked.
    assert out[-1] == f"app.yaml: {len(expected)} problems"
    assert not any(SECRET in line for line in out)
    assert not any("http" in line for line in out)  # other plugins' modules are not ours


def test_engine_templates_are_not_problems(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text = """\
modules:
  - name: pg
    type: eventbus.broker
    config:
      provider: pgchannel
      broker_target: in_process
      dsn: "${PG_DSN}"
      max_conns: "${PG_MAX_CONNS}"
  - name: s
    type: eventbus.stream
    config: {name: ORDERS, subjects: ["orders.>"]}
  - name: c
    type: eventbus.consumer
    config: {name: worker, stream_name: ORDERS, max_deliver: 3}
pipelines:
  p:
    trigger:
      type: trigger.eventbus.subscribe
      config: {name: worker, max_in_flight: 2}
    steps:
      - name: forward
        type: step.eventbus.publish
        config:
          subject: "orders.{{ .body.kind }}"
          payload: "{{ .body.id }}"
          headers: {id: "{{ .body.id }}"}
      - name: pull
        type: step.eventbus.consume
        config:
          consumer: "{{ .consumer }}"
          batch_size: "{{ .n }}"
      - name: ack
        type: step.eventbus.ack
        config: {ack_token: "{{ .ack_token }}"}
    compensation:
      - name: undo
        type: step.eventbus.publish
        config: {subject: orders.undone}
workflows:
  http:
    routes:
      - method: POST
        path: /x
        handler: h
        pipeline:
          steps:
            - name: inline
              type: step.eventbus.publish
              config: {subject: orders.inline}
"""
    code, out = run(tmp_path, text, capsys)
    assert (code, out) == (0, ["app.yaml: ok: 1 broker, 1 stream, 1 consumer, 5 steps, 1 trigger"])


def test_references_between_brokers_streams_consumers_and_triggers(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text = """\
modules:
  - name: a
    type: eventbus.broker
    config: {provider: nats, deploy_target: self_hosted}
  - name: b
    type: eventbus.broker
    config: {provider: nats, deploy_target: self_hosted}
  - name: s
    type: eventbus.stream
    config:
      name: ORDERS
      subjects: ["orders.>"]
  - name: s
    type: eventbus.consumer
    config: {name: w, stream_name: ORDERS, broker_ref: a}
pipelines:
  own:
    trigger:
      type: trigger.eventbus.subscribe
      config: {name: private, stream_name: GONE, bus: b}
  bad:
    trigger:
      type: trigger.eventbus.subscribe
      config: {name: w, max_in_flight: "x"}
"""
    code, out = run(tmp_path, text, capsys)
    assert code == 1
    assert out == [
        f'app.yaml:{line_of(text, "config:", 3)}: eventbus.stream "s": broker_ref: '
        "is required when several brokers are declared (a, b); set broker_ref to one of them",
        f'app.yaml:{line_of(text, "- name: s", 2)}: eventbus.consumer "s": name: another event '
        f"bus module (line {line_of(text, '- name: s')}) has this name; give each module its "
        "own name",
        f'app.yaml:{line_of(text, "GONE")}: trigger.eventbus.subscribe "pipeline:own": '
        "stream_name: no eventbus.stream declares stream 'GONE' (declared: ORDERS); fix "
        "stream_name or add an eventbus.stream with name: GONE",
        f"app.yaml:{line_of(text, 'max_in_flight')}: trigger.eventbus.subscribe "
        "\"pipeline:bad\".max_in_flight: expected an integer (got 'x'); write a whole number",
        "app.yaml: 4 problems",
    ]


def test_yaml_the_engine_refuses(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out = run(tmp_path, "modules:\n  - name: a\n    type: [unclosed\n", capsys)
    assert code == 1 and out[0].startswith("app.yaml:4: not valid YAML: ")
    text = """\
modules:
  - name: bus
    type: eventbus.broker
    config:
      provider: nats
      deploy_target: self_hosted
      provider: pgchannel
"""
    code, out = run(tmp_path, text, capsys)
    assert code == 1
    assert (
        "app.yaml:7: key 'provider' is given twice in this mapping (first on line 5); the "
        "engine refuses that: keep one"
    ) in out
    code, out = run(tmp_path, "- just\n- a list\n", capsys)
    assert code == 1 and "is a mapping" in out[0]


def test_the_test_double_and_unknown_module_types(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text = """\
modules:
  - name: m
    type: eventbus.broker
    config: {provider: memory}
  - name: q
    type: eventbus.queue
  - name: sub
    type: trigger.eventbus.subscribe
    config: {stream_name: X}
"""
    code, out = run(tmp_path, text, capsys)
    assert code == 1
    assert out[0].startswith(
        'app.yaml:4: eventbus.broker "m": provider: is the in-process unit-test double'
    )
    assert out[1].startswith("app.yaml:6: module type 'eventbus.queue' is not provided")
    assert out[2].startswith('app.yaml:8: note: trigger.eventbus.subscribe "sub": a subscribe')
    assert out[3].startswith('app.yaml:9: trigger.eventbus.subscribe "sub": name: is required')


def test_a_missing_file_is_one_line_on_stderr(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["validate", str(tmp_path / "nope.yaml")]) == 1
    out, err = capsys.readouterr()
    assert out == "" and len(err.splitlines()) == 1
    assert err.startswith("error: APP_YAML: cannot read ") and "No such file" in err


def test_setting_paths_of_both_error_forms() -> None:
    where = 'eventbus.consumer "c"'
    assert setting_path(f"{where}.backoff[1]", where) == ["backoff", 1]
    assert setting_path(f"{where}: backoff[1]", where) == ["backoff", 1]
    assert setting_path(f"{where}.tls.ca_file", where) == ["tls", "ca_file"]
    assert setting_path(f"{where}: config[name]", where) == ["name"]
    assert setting_path("somewhere else", where) == []
