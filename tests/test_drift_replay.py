"""`engage replay synthetic --drift-feature`: a bad name is one line and exit 2; a good one
replays the same events with the field shifted from the middle of event time on."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from engage.cli import app
from engage.settings import Settings
from features.events import Event
from producer import commands, synthetic
from tests.test_producer_replay import consume_all

runner = CliRunner()


def test_an_unknown_drift_feature_is_one_line_and_exit_2() -> None:
    result = runner.invoke(app, ["replay", "synthetic", "--drift-feature", "u_events"])
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: --drift-feature: cannot shift")


@pytest.mark.stack
def test_a_drifted_replay_shifts_its_field_in_the_second_half(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(commands, "get_settings", lambda: settings)
    args = ["synthetic", "--users", "40", "--days", "4", "--seed", "5", "--json"]
    result = runner.invoke(app, ["replay", *args, "--drift-feature", "ctx_mobile"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    config = synthetic.SyntheticConfig(users=40, days=4, seed=5, drift="device")
    assert summary["drift"] == f"device from {config.drift_from_ms}"
    events = [Event.model_validate_json(r.value) for r in consume_all(settings, summary["sent"])]
    assert len(events) == summary["sent"] == len(list(synthetic.events(config)))
    late = [e for e in events if e.ts >= config.drift_from_ms]
    early = [e for e in events if e.ts < config.drift_from_ms]
    assert late and all(e.context["device"] == "mobile" for e in late)
    assert {e.context["device"] for e in early} > {"mobile"}  # desktops before the shift
