"""A check that cannot measure reports `unknown` about its own target, so the incident it opens is
the one its measurements later resolve (before, it was keyed by an empty target and stayed open
for ever once the check measured again)."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path

from _helpers import incidents
from conftest import Ops
from fazt_agent.incidents import Incident, transitions
from fazt_agent.pulse.base import CheckResult


def test_a_missing_folder_opens_an_incident_about_that_folder_which_resolves_when_it_is_back(
        ops: Ops, tmp_path: Path) -> None:
    scratch = tmp_path / "scratch"
    ops.write_pulse("scratch", f'[[checks]]\nname = "scratch"\nkind = "dir_size"\npath = "{scratch}"\n'
                               'warning = "1MB"\n')
    r = ops.cli("beat", "--json")
    beat = json.loads(r.stdout)
    [result] = beat["results"]
    assert (result["status"], result["target"]) == ("unknown", str(scratch)), result
    [incident] = incidents(ops)
    assert (incident["target"], incident["status"]) == (str(scratch), "open")

    scratch.mkdir()
    (scratch / "a.log").write_bytes(b"x" * 100)
    r = ops.cli("beat", "--json")
    assert r.returncode == 0, r.stdout + r.stderr
    [incident] = incidents(ops)
    assert incident["status"] == "resolved", incident


def _incident(check: str, target: str) -> Incident:
    now = datetime.now(timezone.utc)
    return Incident(1, check, target, "disk", "open", "unknown", "unknown", "check failed", {}, {}, now, now,
                    None, 1)


def test_a_failure_of_a_whole_multi_target_check_resolves_once_it_measures_again() -> None:
    """disk reports one result per mount; when it fails as a whole its `unknown` has no target."""
    failed = {("disk", ""): _incident("disk", "")}
    measuring = [CheckResult("disk", "disk", "/", "ok", "/ 20% used"),
                 CheckResult("disk", "disk", "/srv", "ok", "/srv 10% used")]
    [t] = transitions(failed, measuring)
    assert (t.change, t.incident, t.severity) == ("resolved", failed[("disk", "")], "ok")
    # still failing, or another check measuring: nothing changes for it
    assert [x.change for x in transitions(failed, [CheckResult("disk", "disk", "", "unknown", "timed out")])] \
        == ["unchanged"]
    assert transitions(failed, [CheckResult("other", "disk", "/", "ok", "fine")]) == []
