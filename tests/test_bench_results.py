"""The day's results file merges --only runs and says which run measured which figures."""

from __future__ import annotations

import json
from typing import Any

from bench.common import QUICK
from bench.harness import SCHEMA, write


def _result(only: list[str], value: float, commit: str) -> dict[str, Any]:
    figures = {
        f"{group}_figure": {"group": group, "description": "d", "unit": "u", "median": value,
                            "min": value, "max": value, "runs": 1, "values": [value],
                            "ceiling": None, "details": []}
        for group in only
    }  # fmt: skip
    return {
        "schema": SCHEMA, "date": "2026-01-01",
        "command": f"python -m bench --only {','.join(only)}", "quick": True, "runs": 1,
        "only": only, "seconds": 10.0,
        "machine": {"load_average": [0.5, 0.5, 0.5], "git_commit": commit, "cpus": 2,
                    "platform": "p", "python": "3.11", "kafka": "k", "redis": "r"},
        "load_average_end": [0.7, 0.7, 0.7], "model_version": None, "model_requested": False,
        "figures": figures, "errors": {},
    }  # fmt: skip


def test_merged_runs_keep_their_own_provenance(tmp_path) -> None:
    write(_result(["ceilings", "replay"], 1.0, "aaa"), tmp_path, QUICK)
    write(_result(["replay"], 2.0, "bbb"), tmp_path, QUICK)

    merged = json.loads((tmp_path / "2026-01-01.json").read_text())
    assert merged["figures"]["ceilings_figure"]["median"] == 1.0
    assert merged["figures"]["replay_figure"]["median"] == 2.0
    assert [(h["commit"], h["groups"]) for h in merged["history"]] == [
        ("aaa", ["ceilings"]),  # its replay figure was measured again
        ("bbb", ["replay"]),
    ]
    markdown = (tmp_path / "2026-01-01.md").read_text()
    assert "- ceilings: `python -m bench --only ceilings,replay`" in markdown
    assert "- replay: `python -m bench --only replay`" in markdown

    write(_result(["ceilings", "replay"], 3.0, "ccc"), tmp_path, QUICK)
    again = json.loads((tmp_path / "2026-01-01.json").read_text())
    assert [h["commit"] for h in again["history"]] == ["ccc"]
    assert "come from these runs" not in (tmp_path / "2026-01-01.md").read_text()
