"""The `cleanup` action on real files: selection, apply, compress, and the safety rules."""

from __future__ import annotations

import asyncio
import gzip
import json
import os
import shutil
import tempfile
from datetime import datetime, timezone
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from _helpers import FakeClock
from fazt_agent.errors import ActionError
from fazt_agent.kernel import ACTIONS, ActionContext, Constraints, Plan

NOW = datetime(2026, 5, 1, 12, 0, tzinfo=timezone.utc)
DAY = 86400


def context(*roots: Path, **settings: object) -> ActionContext:
    return ActionContext(clock=FakeClock(NOW, mono=0.0), constraints=Constraints(cleanup_roots=tuple(roots)),
                         settings=settings)


def make(path: Path, size: int, age_days: float, fill: bytes = b"x") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes((fill * size)[:size])
    when = NOW.timestamp() - age_days * DAY
    os.utime(path, (when, when))
    return path


async def plan(args: dict, ctx: ActionContext) -> Plan:
    action = ACTIONS["cleanup"]()
    return await action.plan(action.validate(args, ctx), ctx)


async def apply(p: Plan, ctx: ActionContext):
    stored = Plan.from_json(json.loads(json.dumps(p.to_json())))  # as a halt keeps it
    return await ACTIONS["cleanup"]().apply(stored, ctx)


@pytest.fixture
def root(tmp_path: Path) -> Path:
    (tmp_path / "app").mkdir()
    return tmp_path / "app"


async def test_plan_lists_only_old_matching_big_enough_files_oldest_first(root):
    old = make(root / "old.log", 300, 10)
    older = make(root / "sub" / "deep" / "older.log", 200, 20)
    make(root / "new.log", 300, 1)
    make(root / "small.log", 10, 30)
    make(root / "old.txt", 300, 30)
    p = await plan({"root": str(root), "older_than": "7d", "min_size": 100, "pattern": "*.log"}, context(root))
    assert [f["path"] for f in p.details["files"]] == [str(older), str(old)]
    assert p.details["total_bytes"] == 500 and p.details["count"] == 2
    assert p.steps == [f"delete {older} (200 B)", f"delete {old} (300 B)"]
    assert p.summary == f"delete 2 files (500 B) matching '*.log' of at least 100 B older than 7d under {root}"
    assert (p.risk, p.deletes, p.reversible, p.noop) == ("safe", True, False, False)


async def test_apply_deletes_exactly_the_planned_files_and_keeps_the_root(root):
    doomed = [make(root / "a.log", 100, 9), make(root / "d" / "b.log", 50, 8)]
    kept = make(root / "fresh.log", 100, 1)
    ctx = context(root)
    p = await plan({"root": str(root), "older_than": "2d"}, ctx)
    late = make(root / "late.log", 70, 30)  # appeared after planning: not in the plan
    outcome = await apply(p, ctx)
    assert outcome.ok
    assert outcome.details == {"freed_bytes": 150, "deleted": 2, "skipped": []}
    assert outcome.message == "freed 150 B (2 files)"
    assert not any(f.exists() for f in doomed)
    assert kept.exists() and late.exists() and root.is_dir() and (root / "d").is_dir()


async def test_nothing_matching_is_a_safe_noop_plan(root):
    make(root / "fresh.log", 100, 1)
    p = await plan({"older_than": "7d"}, context(root))
    assert p.noop and not p.deletes and p.risk == "safe" and p.steps == []
    assert p.summary == f"nothing to delete under {root} (no file older than 7d)"


async def test_max_files_keeps_the_oldest_and_says_how_many_matched(root):
    for age in range(1, 6):
        make(root / f"{age}.log", 10, age)
    p = await plan({"max_files": 2}, context(root))
    assert [Path(f["path"]).name for f in p.details["files"]] == ["5.log", "4.log"]
    assert p.details["matched"] == 5 and p.summary.endswith("(the oldest 2 of 5)")


async def test_compress_mode_gzips_each_file_with_the_same_content_and_reports_freed_bytes(root):
    text = b"line of a log file\n" * 500
    make(root / "app.log", len(text), 5, fill=text)
    make(root / "old.log.gz", 40, 5)
    ctx = context(root, destructive_above=10)
    p = await plan({"mode": "compress"}, ctx)
    assert [Path(f["path"]).name for f in p.details["files"]] == ["app.log"]
    assert (p.risk, p.deletes, p.reversible) == ("safe", False, True)
    outcome = await apply(p, ctx)
    packed = root / "app.log.gz"
    assert outcome.ok and outcome.details["compressed"] == 1
    assert not (root / "app.log").exists()
    with gzip.open(packed) as f:
        assert f.read() == text
    assert outcome.details["freed_bytes"] == len(text) - packed.stat().st_size > 0
    assert packed.stat().st_mtime == NOW.timestamp() - 5 * DAY


async def test_compress_skips_a_file_whose_gz_already_exists(root):
    original = make(root / "app.log", 100, 5)
    p = await plan({"mode": "compress"}, context(root))
    make(root / "app.log.gz", 3, 1)
    outcome = await apply(p, context(root))
    assert outcome.details["skipped"] == [{"path": str(original), "reason": "app.log.gz already exists"}]
    assert original.exists() and (root / "app.log.gz").read_bytes() == b"xxx"


async def test_no_allowed_roots_refuses_every_cleanup(root):
    with pytest.raises(ActionError, match=r"no cleanup roots are allowed") as e:
        await plan({"root": str(root)}, context())
    assert e.value.permanent


async def test_a_root_outside_the_allowed_roots_is_refused(tmp_path, root):
    (tmp_path / "other").mkdir()
    with pytest.raises(ActionError, match=r"outside the allowed roots.*allowed roots: " + str(root)):
        await plan({"root": str(tmp_path / "other")}, context(root))


async def test_a_sibling_with_a_common_prefix_is_not_inside_the_allowed_root(tmp_path, root):
    make(tmp_path / "app2" / "data.db", 10, 30)
    with pytest.raises(ActionError, match="outside the allowed roots"):
        await plan({"root": str(tmp_path / "app2")}, context(root))
    assert (tmp_path / "app2" / "data.db").exists()


@pytest.mark.parametrize("given", ["relative/dir", "{root}/../app", "{root}/sub/.."])
async def test_relative_roots_and_dotdot_are_refused(root, given):
    (root / "sub").mkdir()
    with pytest.raises(ActionError, match="must be an absolute path without '..'"):
        await plan({"root": given.format(root=root)}, context(root))


def test_a_pattern_with_a_slash_is_refused_by_the_schema(root):
    with pytest.raises(ValidationError, match="file names only"):
        ACTIONS["cleanup"]().validate({"pattern": "../*"}, context(root))


async def test_a_subdirectory_of_an_allowed_root_may_be_cleaned_alone(root):
    inner = make(root / "cache" / "x.bin", 10, 3)
    make(root / "keep.bin", 10, 3)
    p = await plan({"root": str(root / "cache")}, context(root))
    assert [f["path"] for f in p.details["files"]] == [str(inner)]


async def test_a_file_symlink_pointing_outside_is_neither_followed_nor_removed(tmp_path, root):
    outside = make(tmp_path / "secret.key", 100, 100)
    (root / "link.key").symlink_to(outside)
    ctx = context(root)
    p = await plan({}, ctx)
    assert p.noop and p.details["skipped_symlinks"] == 1
    await apply(p, ctx)
    assert outside.exists() and (root / "link.key").is_symlink()


async def test_a_directory_symlink_pointing_outside_is_not_walked(tmp_path, root):
    outside = make(tmp_path / "precious" / "data.db", 100, 100)
    (root / "escape").symlink_to(tmp_path / "precious")
    (root / "up").symlink_to(tmp_path)
    mine = make(root / "mine.tmp", 5, 100)
    ctx = context(root)
    p = await plan({}, ctx)
    assert [f["path"] for f in p.details["files"]] == [str(mine)]
    assert p.details["skipped_symlinks"] == 2
    assert (await apply(p, ctx)).ok
    assert outside.exists() and not mine.exists()


async def test_a_root_given_as_a_symlink_to_outside_the_allowed_roots_is_refused(tmp_path, root):
    make(tmp_path / "etc" / "passwd", 10, 100)
    (root / "innocent").symlink_to(tmp_path / "etc")
    with pytest.raises(ActionError, match=r"resolves to .*etc'\) is outside the allowed roots"):
        await plan({"root": str(root / "innocent")}, context(root))


async def test_an_allowed_root_that_is_a_symlink_is_planned_by_its_resolved_path(tmp_path):
    real = tmp_path / "data" / "tmp"
    f = make(real / "a.tmp", 10, 9)
    (tmp_path / "tmp").symlink_to(real)
    p = await plan({"root": str(tmp_path / "tmp")}, context(tmp_path / "tmp"))
    assert p.details["roots"] == [str(real)] and p.args["root"] == str(real)
    assert p.details["files"][0]["path"] == str(f)


async def test_a_directory_swapped_for_a_symlink_after_planning_deletes_nothing_outside(tmp_path, root):
    planned = [make(root / "logs" / "a.log", 10, 9), make(root / "logs" / "b.log", 20, 9)]
    other = make(root / "top.log", 30, 9)
    ctx = context(root)
    p = await plan({}, ctx)
    assert p.details["count"] == 3
    # the attack: move the directory out (same inodes, sizes, mtimes) and leave a symlink in its place
    (root / "logs").rename(tmp_path / "elsewhere")
    (root / "logs").symlink_to(tmp_path / "elsewhere")
    outcome = await apply(p, ctx)
    assert (tmp_path / "elsewhere" / "a.log").exists() and (tmp_path / "elsewhere" / "b.log").exists()
    assert [s["path"] for s in outcome.details["skipped"]] == [str(f) for f in planned]
    assert "symlink" in outcome.details["skipped"][0]["reason"]
    assert not other.exists() and outcome.details["freed_bytes"] == 30


async def test_a_file_modified_between_plan_and_apply_is_skipped(root):
    changed = make(root / "busy.log", 10, 9)
    idle = make(root / "idle.log", 10, 9)
    ctx = context(root)
    p = await plan({}, ctx)
    with changed.open("ab") as f:
        f.write(b"more")
    outcome = await apply(p, ctx)
    assert outcome.details["skipped"] == [{"path": str(changed), "reason": "changed since the plan"}]
    assert changed.read_bytes() == b"x" * 10 + b"more" and not idle.exists()
    assert outcome.ok and outcome.message == "freed 10 B (1 file); skipped 1"


async def test_a_file_replaced_by_a_new_one_of_the_same_size_is_skipped(root):
    f = make(root / "x.log", 10, 9)
    p = await plan({}, context(root))
    f.unlink()
    make(root / "x.log", 10, 9, fill=b"y")  # same name, size, mtime, often the same inode number
    outcome = await apply(p, context(root))
    assert f.read_bytes() == b"y" * 10 and outcome.details["skipped"][0]["reason"] == "changed since the plan"


@pytest.mark.parametrize(("limits", "risk"), [
    ({"destructive_above": "1KB", "destructive_files": 100}, "destructive"),
    ({"destructive_above": "2KB", "destructive_files": 100}, "safe"),
    ({"destructive_above": "2KB", "destructive_files": 2}, "destructive"),
])
async def test_risk_is_destructive_above_the_configured_size_or_file_count(root, limits, risk):
    for i in range(3):
        make(root / f"{i}.log", 600, 9)
    assert (await plan({}, context(root, **limits))).risk == risk


async def test_a_plan_whose_file_set_grew_20_percent_is_a_material_change(root):
    for i in range(10):
        make(root / f"{i}.log", 100, 9)
    ctx = context(root)
    approved = await plan({}, ctx)
    assert ACTIONS["cleanup"]().material_change(approved, await plan({}, ctx)) is None
    make(root / "10.log", 100, 9)
    make(root / "11.log", 100, 9)
    reason = ACTIONS["cleanup"]().material_change(approved, await plan({}, ctx))
    assert reason == "12 files match now, 10 when approved (more than 10 % more)"


async def test_a_plan_whose_bytes_grew_or_risk_rose_is_a_material_change(root):
    make(root / "a.log", 100, 9)
    approved = await plan({}, context(root))
    assert ACTIONS["cleanup"]().material_change(approved, await plan({}, context(root, destructive_above=50))) \
        == "the risk rose from safe to destructive"
    make(root / "a.log", 200, 9)
    reason = ACTIONS["cleanup"]().material_change(approved, await plan({}, context(root)))
    assert reason == "200 B matches now, 100 B when approved (more than 10 % more)"


async def test_apply_refuses_a_plan_whose_root_is_no_longer_allowed(tmp_path, root):
    make(root / "a.log", 10, 9)
    p = await plan({}, context(root))
    (tmp_path / "other").mkdir()
    with pytest.raises(ActionError, match="no longer inside an allowed root"):
        await apply(p, context(tmp_path / "other"))
    assert (root / "a.log").exists()


# --- property: whatever the tree and its symlinks, nothing outside the root is ever deleted ---

DIRS = st.lists(st.sampled_from(["d1", "d2", "d3"]), min_size=1, max_size=3).map(tuple)
TARGETS = ["outside_file", "outside_dir", "outside_root", "inside_file", "inside_dir", "root", "parent", "missing"]


@st.composite
def trees(draw):
    dirs = draw(st.lists(DIRS, max_size=5))
    files = draw(st.lists(st.tuples(st.sampled_from([(), *dirs]), st.sampled_from(["f1", "f2.log"])), max_size=8))
    links = draw(st.lists(st.tuples(st.sampled_from([(), *dirs]), st.sampled_from(["l1", "l2"]),
                                    st.sampled_from(TARGETS)), max_size=5))
    swap = draw(st.none() | st.sampled_from(dirs)) if dirs else None
    return dirs, files, links, swap


def snapshot(base: Path, root: Path) -> dict[str, bytes]:
    """Every regular file under `base` outside `root`, by path, with its content."""
    out = {}
    for dirpath, _, names in os.walk(base):
        for name in names:
            p = Path(dirpath) / name
            if not p.is_symlink() and root not in p.parents:
                out[str(p)] = p.read_bytes()
    return out


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(trees())
def test_apply_never_deletes_anything_outside_the_root_nor_the_root(tree):
    dirs, files, links, swap = tree
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        root = base / "srv" / "app"
        for d in dirs:
            (root.joinpath(*d)).mkdir(parents=True, exist_ok=True)
        root.mkdir(parents=True, exist_ok=True)
        for d, name in files:
            if not root.joinpath(*d, name).exists():
                make(root.joinpath(*d, name), 7, 9)
        make(base / "outside" / "f1", 5, 9)
        make(base / "outside" / "d1" / "f2.log", 5, 9)
        make(base / "srv" / "app2" / "f1", 5, 9)
        targets = {"outside_file": base / "outside" / "f1", "outside_dir": base / "outside",
                   "outside_root": base / "srv" / "app2", "inside_file": root.joinpath(*files[0][0], files[0][1])
                   if files else root / "nope", "inside_dir": root.joinpath(*dirs[0]) if dirs else root,
                   "root": root, "parent": base / "srv", "missing": base / "missing"}
        for d, name, target in links:
            link = root.joinpath(*d, name)
            if not os.path.lexists(link):
                link.symlink_to(targets[target])
        ctx = context(root)
        p = asyncio.run(plan({}, ctx))
        if swap is not None and root.joinpath(*swap).is_dir() and not root.joinpath(*swap).is_symlink():
            shutil.move(root.joinpath(*swap), base / "moved")
            root.joinpath(*swap).symlink_to(base / "moved")
        before = snapshot(base, root)
        planned = {f["path"] for f in p.details["files"]}
        inside_before = {str(x) for x in root.rglob("*") if x.is_file() and not x.is_symlink()}
        asyncio.run(apply(p, ctx))
        assert snapshot(base, root) == before
        assert root.is_dir() and not root.is_symlink()
        inside_after = {str(x) for x in root.rglob("*") if x.is_file() and not x.is_symlink()}
        assert inside_before - inside_after <= planned
        assert all(os.path.lexists(root.joinpath(*d, name)) for d, name, _ in links
                   if swap is None or d[:len(swap)] != swap)
