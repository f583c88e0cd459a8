"""The `system` and `disk` kinds against the real machine, and disk fill-rate estimates."""

import os
from datetime import datetime, timedelta, timezone

import psutil
import pytest
from pydantic import ValidationError

from _helpers import FakeClock
from fazt_agent.clock import SystemClock
from fazt_agent.pulse import CHECKS
from fazt_agent.pulse.base import CheckContext, History
from fazt_agent.pulse.disk import DiskConfig, real_mounts
from fazt_agent.pulse.runner import run_check
from fazt_agent.pulse.system import SystemConfig

NOW = datetime(2025, 6, 1, 12, 0, tzinfo=timezone.utc)


class FakeHistory:
    """Stored `used_bytes` points, and a record of what was asked."""

    def __init__(self, points: list[tuple[datetime, float]]):
        self.points = points
        self.calls: list[tuple[str, str, str, datetime]] = []

    async def series(self, check: str, target: str, metric: str, since: datetime) -> list[tuple[datetime, float]]:
        self.calls.append((check, target, metric, since))
        return [p for p in self.points if p[0] >= since]


async def run(config: dict, history: History | None = None, clock=None):
    kind = CHECKS[config["kind"]]
    check = kind(kind.Config.model_validate(config))
    return await run_check(check, CheckContext(clock or SystemClock(), history), 10.0)


def growth(rate_per_hour: float, hours_back: list[float]) -> list[tuple[datetime, float]]:
    """Points ending at the current real usage of "/", growing at `rate_per_hour`."""
    used = psutil.disk_usage("/").used
    return [(NOW - timedelta(hours=h), used - rate_per_hour * h) for h in hours_back]


async def test_system_reports_sane_values_for_this_machine():
    [result] = await run({"kind": "system", "name": "sys"})
    m = result.metrics
    assert result.kind == "system" and result.target == ""
    assert 0 <= m["cpu_percent"] <= 100
    assert 0 < m["memory_percent"] < 100
    assert m["memory_used_bytes"] + m["memory_available_bytes"] == pytest.approx(m["memory_total_bytes"])
    assert m["memory_total_bytes"] == psutil.virtual_memory().total
    assert 0 <= m["swap_percent"] <= 100
    assert m["cores"] >= 1 and m["load1"] >= 0 and m["load15"] >= 0
    assert m["load_per_core"] == pytest.approx(m["load5"] / m["cores"])
    with open("/proc/uptime") as f:  # the kernel's own uptime: no wall clock (or its date) involved
        assert m["uptime_seconds"] == pytest.approx(float(f.read().split()[0]), abs=5)
    assert result.status in ("ok", "warning", "critical")
    if result.status == "ok":  # a busy machine lists only what is bad
        assert "memory" in result.message
    else:
        assert result.message


async def test_system_with_tiny_thresholds_is_critical_and_names_what_is_bad():
    [result] = await run({"kind": "system", "name": "sys", "memory_warning": 0.0001, "memory_critical": 0.0001,
                          "cpu_warning": None, "cpu_critical": None, "swap_warning": None,
                          "swap_critical": None, "load_per_core_warning": None,
                          "load_per_core_critical": None})
    assert result.status == "critical"
    assert result.message.startswith("memory ") and "available" in result.message
    assert "cpu" not in result.message


async def test_system_with_a_low_load_warning_warns():
    [result] = await run({"kind": "system", "name": "sys", "load_per_core_warning": 0, "memory_critical": None,
                          "memory_warning": None, "cpu_critical": None, "cpu_warning": None})
    assert result.status == "warning"
    assert "per core" in result.message


def test_system_refuses_a_warning_beyond_critical_on_the_warning_key():
    with pytest.raises(ValidationError) as e:
        SystemConfig.model_validate({"kind": "system", "name": "sys", "cpu_critical": 50, "cpu_warning": 60})
    assert [err["loc"] for err in e.value.errors()] == [("cpu_warning",)]


def test_system_refuses_a_warning_beyond_the_default_critical():
    with pytest.raises(ValidationError) as e:
        SystemConfig.model_validate({"kind": "system", "name": "sys", "memory_warning": 99})
    assert e.value.errors()[0]["loc"] == ("memory_warning",)


@pytest.mark.parametrize(("model", "kind"), [(SystemConfig, "system"), (DiskConfig, "disk")])
def test_unknown_keys_are_refused(model, kind):
    with pytest.raises(ValidationError) as e:
        model.model_validate({"kind": kind, "name": "x", "cpu_warnign": 5})
    assert e.value.errors()[0]["type"] == "extra_forbidden"


def test_real_mounts_include_root_once_and_no_loop_devices():
    mounts = real_mounts()
    assert "/" in mounts
    assert len(mounts) == len(set(mounts))
    devices = {p.mountpoint: p.device for p in psutil.disk_partitions(all=False)}
    assert not any(devices[m].startswith("/dev/loop") for m in mounts)


async def test_disk_reports_every_real_mount_with_sane_values():
    results = await run({"kind": "disk", "name": "disk"})
    assert [r.target for r in results] == real_mounts()
    root = next(r for r in results if r.target == "/")
    m = root.metrics
    assert 0 < m["used_percent"] < 100
    assert m["total_bytes"] >= m["used_bytes"] + m["free_bytes"] > 0
    assert 0 < m.get("inodes_used_percent", 50) < 100
    assert root.message.startswith("/ ") and "% used" in root.message and "free" in root.message
    assert "full_in_hours" not in m  # no history, no estimate


async def test_disk_with_a_tiny_warning_threshold_warns_on_root():
    [result] = await run({"kind": "disk", "name": "disk", "mounts": ["/"], "warning": 0.0001})
    assert result.status == "warning"


async def test_disk_with_tiny_thresholds_is_critical_on_root():
    [result] = await run({"kind": "disk", "name": "disk", "mounts": ["/"], "warning": 0.0001,
                          "critical": 0.0001})
    assert result.status == "critical"


async def test_disk_with_a_tiny_inode_threshold_says_so():
    if os.statvfs("/").f_files == 0:
        pytest.fail("the root filesystem of the test machine has no inode count; run tests on ext4/xfs")
    [result] = await run({"kind": "disk", "name": "disk", "mounts": ["/"], "inodes_warning": 0.0001})
    assert result.status == "warning"
    assert "inodes" in result.message


async def test_disk_reports_a_configured_mount_that_does_not_exist_as_unknown():
    results = await run({"kind": "disk", "name": "disk", "mounts": ["/", "/no/such/mount"]})
    assert [(r.target, r.status) for r in results][1] == ("/no/such/mount", "unknown")
    assert "does not exist" in results[1].message
    assert results[0].status != "unknown"


async def test_disk_estimates_when_it_will_be_full_from_history():
    free = psutil.disk_usage("/").free
    history = FakeHistory(growth(free / 10, [3, 2, 1, 0.5]))
    [result] = await run({"kind": "disk", "name": "disk", "mounts": ["/"]}, history, FakeClock(NOW, mono=0.0))
    assert result.metrics["full_in_hours"] == pytest.approx(10, rel=0.01)
    assert result.metrics["growth_bytes_per_hour"] == pytest.approx(free / 10, rel=0.01)
    assert "full in ~10 h" in result.message
    assert result.status == "warning"  # default full_in_warning is 24h, critical 4h
    assert history.calls == [("disk", "/", "used_bytes", NOW - timedelta(hours=6))]


async def test_disk_filling_within_full_in_critical_is_critical():
    free = psutil.disk_usage("/").free
    history = FakeHistory(growth(free / 2, [2, 1, 0.5]))
    [result] = await run({"kind": "disk", "name": "disk", "mounts": ["/"]}, history, FakeClock(NOW, mono=0.0))
    assert result.status == "critical"
    assert "full in ~2 h" in result.message


async def test_disk_full_in_thresholds_are_configurable_durations():
    free = psutil.disk_usage("/").free
    history = FakeHistory(growth(free / 100, [5, 3, 1]))
    [result] = await run({"kind": "disk", "name": "disk", "mounts": ["/"], "full_in_warning": "5d",
                          "full_in_critical": "2d"}, history, FakeClock(NOW, mono=0.0))
    assert result.status == "warning"
    assert "full in ~4 d" in result.message


async def test_disk_growing_slowly_is_ok_with_an_estimate():
    free = psutil.disk_usage("/").free
    history = FakeHistory(growth(free / 1000, [5, 3, 1]))
    [result] = await run({"kind": "disk", "name": "disk", "mounts": ["/"]}, history, FakeClock(NOW, mono=0.0))
    assert result.status == "ok"
    assert result.metrics["full_in_hours"] == pytest.approx(1000, rel=0.01)


async def test_disk_without_enough_history_gives_no_estimate():
    history = FakeHistory(growth(1e9, [0.1]))  # one stored point plus the current: too few
    [result] = await run({"kind": "disk", "name": "disk", "mounts": ["/"]}, history, FakeClock(NOW, mono=0.0))
    assert "full_in_hours" not in result.metrics and "full in" not in result.message


async def test_disk_shrinking_gives_no_full_in_estimate():
    history = FakeHistory(growth(-1e9, [3, 2, 1]))
    [result] = await run({"kind": "disk", "name": "disk", "mounts": ["/"]}, history, FakeClock(NOW, mono=0.0))
    assert result.metrics["growth_bytes_per_hour"] == pytest.approx(-1e9, rel=0.01)
    assert "full_in_hours" not in result.metrics


async def test_disk_only_reads_history_inside_the_fill_window():
    free = psutil.disk_usage("/").free
    history = FakeHistory(growth(free / 10, [30, 20, 10]))  # all older than the 1h window
    [result] = await run({"kind": "disk", "name": "disk", "mounts": ["/"], "fill_window": "1h"},
                         history, FakeClock(NOW, mono=0.0))
    assert "full_in_hours" not in result.metrics
    assert history.calls[0][3] == NOW - timedelta(hours=1)


def test_disk_refuses_a_full_in_warning_sooner_than_critical():
    with pytest.raises(ValidationError) as e:
        DiskConfig.model_validate({"kind": "disk", "name": "d", "full_in_critical": "4h",
                                   "full_in_warning": "1h"})
    assert [err["loc"] for err in e.value.errors()] == [("full_in_warning",)]


def test_disk_refuses_a_percent_warning_beyond_critical():
    with pytest.raises(ValidationError) as e:
        DiskConfig.model_validate({"kind": "disk", "name": "d", "critical": 80, "warning": 90})
    assert e.value.errors()[0]["loc"] == ("warning",)


def test_disk_thresholds_can_be_disabled():
    config = DiskConfig.model_validate({"kind": "disk", "name": "d", "critical": None, "warning": 99,
                                        "full_in_critical": None, "full_in_warning": None})
    assert config.critical is None and config.full_in_warning is None
