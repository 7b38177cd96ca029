"""upgrade-config: old module types and trigger alias keys rewritten, nothing else touched."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from workflow_eventbus.cli import upgrade_config
from workflow_eventbus.cli.main import main
from workflow_eventbus.cli.upgrade_config import upgrade

ROOT = Path(__file__).resolve().parents[2]
GO_SHAPES = ROOT / "interop" / "apps" / "go-shapes.yaml"


def test_the_go_shapes_app_changes_in_exactly_its_old_words() -> None:
    before = GO_SHAPES.read_text()
    result = upgrade(before)
    assert [(e.line + 1, e.old, e.new) for e in result.edits] == [
        (17, "infra.eventbus", "eventbus.broker"),
        (24, "infra.eventbus.stream", "eventbus.stream"),
        (31, "infra.eventbus.consumer", "eventbus.consumer"),
        (44, "consumer", "name"),
        (45, "bus", "broker_ref"),
    ]
    old, new = before.splitlines(), result.text.splitlines()
    assert len(old) == len(new)
    changed = [i + 1 for i, (a, b) in enumerate(zip(old, new, strict=True)) if a != b]
    assert changed == [17, 24, 31, 44, 45]
    # The aligned comments stay in their column.
    assert new[43].index("#") == old[43].index("#") and new[44].index("#") == old[44].index("#")
    data = yaml.safe_load(result.text)
    assert [m["type"] for m in data["modules"]] == [
        "eventbus.broker",
        "eventbus.stream",
        "eventbus.consumer",
    ]
    config = data["pipelines"]["on-delivered"]["trigger"]["config"]
    assert list(config) == ["name", "broker_ref", "filter_subject"]
    assert (config["name"], config["broker_ref"]) == ("settlement-runner", "bus")
    assert upgrade(result.text).edits == []  # a second run has nothing left to do


def test_quoted_and_flow_styles_keep_their_style() -> None:
    text = (
        "modules:\n"
        '  - {name: bus, type: "infra.eventbus", config: {provider: nats}}\n'
        "  - name: s\n"
        "    type: 'infra.eventbus.stream'  # the stream\n"
        "pipelines:\n"
        "  p:\n"
        "    trigger: {type: trigger.eventbus.subscribe, config: {consumer: c, bus: bus}}\n"
    )
    result = upgrade(text)
    assert result.text == (
        "modules:\n"
        '  - {name: bus, type: "eventbus.broker", config: {provider: nats}}\n'
        "  - name: s\n"
        "    type: 'eventbus.stream'  # the stream\n"
        "pipelines:\n"
        "  p:\n"
        "    trigger: {type: trigger.eventbus.subscribe, config: {name: c, broker_ref: bus}}\n"
    )


def test_an_alias_next_to_its_key_is_reported_and_left() -> None:
    text = (
        "pipelines:\n"
        "  p:\n"
        "    trigger:\n"
        "      type: trigger.eventbus.subscribe\n"
        "      config:\n"
        "        name: a\n"
        "        consumer: b\n"
        "    steps:\n"
        "      - {name: c, type: step.eventbus.consume, config: {consumer: a}}\n"
    )
    result = upgrade(text)
    assert result.edits == [] and result.text == text  # a step's consumer: is no alias
    assert result.notes == [
        (7, "trigger config gives both consumer: and name:; name: wins, delete consumer:")
    ]


def test_write_saves_and_validate_then_reports_no_old_names(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    app = tmp_path / "app.yaml"
    app.write_text(GO_SHAPES.read_text())
    assert main(["upgrade-config", str(app)]) == 0
    shown = capsys.readouterr().out
    assert f"{app}:17: type infra.eventbus -> eventbus.broker" in shown
    assert "-    type: infra.eventbus\n+    type: eventbus.broker\n" in shown
    assert app.read_text() == GO_SHAPES.read_text()  # no --write: nothing saved
    assert main(["upgrade-config", str(app), "--check"]) == 1
    assert f"{app}: 5 change(s) to make" in capsys.readouterr().out
    assert main(["upgrade-config", str(app), "--write"]) == 0
    assert f"{app}: 5 change(s) written" in capsys.readouterr().out
    assert main(["validate", str(app)]) == 0
    out = capsys.readouterr().out
    assert "deprecated" not in out and out.endswith(
        "ok: 1 broker, 1 stream, 1 consumer, 1 step, 1 trigger\n"
    )
    assert main(["upgrade-config", str(app)]) == 0
    assert capsys.readouterr().out == f"{app}: nothing to upgrade\n"
    assert main(["upgrade-config", str(app), "--check"]) == 0


def test_unreadable_or_broken_files_exit_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["upgrade-config", str(tmp_path / "missing.yaml")]) == 1
    assert "cannot read" in capsys.readouterr().err
    broken = tmp_path / "broken.yaml"
    broken.write_text("modules: [\n")
    assert main(["upgrade-config", str(broken)]) == 1
    assert "is not valid YAML" in capsys.readouterr().err


def test_write_keeps_crlf_line_endings_byte_for_byte(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    lf = GO_SHAPES.read_text()
    assert "\r" not in lf
    before = lf.replace("\n", "\r\n").encode()
    app = tmp_path / "app.yaml"
    app.write_bytes(before)
    assert main(["upgrade-config", str(app), "--write"]) == 0
    assert f"{app}: 5 change(s) written" in capsys.readouterr().out
    after = app.read_bytes()
    # Exactly the LF upgrade (the renamed words, comments kept in their column), CRLF kept.
    assert after == upgrade(lf).text.replace("\n", "\r\n").encode()
    old, new = before.split(b"\r\n"), after.split(b"\r\n")
    changed = [i + 1 for i, (a, b) in enumerate(zip(old, new, strict=True)) if a != b]
    assert changed == [17, 24, 31, 44, 45]


def test_tagged_values_elsewhere_do_not_stop_the_upgrade() -> None:
    text = "modules:\n- name: b  # !Ref below\n  type: infra.eventbus\n  x: !Ref y\n"
    assert upgrade(text).text == text.replace("infra.eventbus", "eventbus.broker")
    assert upgrade("a: !!str b\n").edits == []


def _edit_more(monkeypatch: pytest.MonkeyPatch) -> None:
    """_apply changing one more value than its edits (what _check exists to catch)."""
    real = upgrade_config._apply
    monkeypatch.setattr(
        upgrade_config, "_apply", lambda text, edits: real(text, edits).replace("b\n", "c\n")
    )


@pytest.mark.parametrize(
    ("text", "where", "patch"),
    [
        ('modules:\n- name: b\n  type: "infra.\\x65ventbus"\n', "line 3: type", None),
        ("modules:\n- name: b\n  type: infra.eventbus\n", "line 3: type", _edit_more),
    ],
)
def test_a_name_it_cannot_edit_in_place_is_an_error_naming_the_line_not_a_traceback(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    text: str,
    where: str,
    patch: Callable[[pytest.MonkeyPatch], None] | None,
) -> None:
    if patch is not None:
        patch(monkeypatch)
    app = tmp_path / "app.yaml"
    app.write_text(text)
    assert main(["upgrade-config", str(app), "--write"]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"error: APP_YAML: {app}: {where}: infra.eventbus ")
    assert "change infra.eventbus to eventbus.broker by hand" in err
    assert app.read_text() == text  # nothing written
