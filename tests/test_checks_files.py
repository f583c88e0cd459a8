"""The `dir_size` and `file_age` kinds on real trees in tmp_path."""

import os
import shutil
from datetime import datetime, timezone
from pathlib import Path

import pytest
from pydantic import ValidationError

from _helpers import FakeClock
from fazt_agent.pulse import CHECKS
from fazt_agent.pulse.base import CheckContext
from fazt_agent.pulse.dir_size import DirSizeConfig, total_size, walk_files
from fazt_agent.pulse.file_age import FileAgeConfig
from fazt_agent.pulse.runner import run_check

NOW = 1_750_000_000.0
HOUR = 3600.0


async def run(config: dict):
    kind = CHECKS[config["kind"]]
    clock = FakeClock(datetime.fromtimestamp(NOW, timezone.utc), mono=0.0)
    return await run_check(kind(kind.Config.model_validate(config)), CheckContext(clock), 10.0)


def write(path: Path, size: int, hours_old: float = 0.0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x" * size)
    os.utime(path, (NOW - hours_old * HOUR, NOW - hours_old * HOUR))
    return path


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """1000 + 200 + 30 bytes in 3 files, plus links that must not count."""
    root = tmp_path / "data"
    write(root / "a.bin", 1000)
    write(root / "sub" / "b.bin", 200)
    write(root / "sub" / "deeper" / "c.bin", 30)
    big = write(tmp_path / "outside" / "big.bin", 1_000_000)
    (root / "link-to-big").symlink_to(big)
    (root / "link-to-outside-dir").symlink_to(big.parent, target_is_directory=True)
    (root / "sub" / "loop").symlink_to(root, target_is_directory=True)
    (root / "dangling").symlink_to(tmp_path / "nothing-here")
    os.link(root / "a.bin", root / "sub" / "a-again.bin")  # a hard link: the same bytes
    return root


async def test_dir_size_counts_regular_files_once_and_never_follows_symlinks(tree):
    [result] = await run({"kind": "dir_size", "name": "data", "path": str(tree)})
    assert result.status == "ok"
    assert result.target == str(tree)
    assert result.metrics == {"size_bytes": 1230.0, "files": 3.0}
    assert result.message == f"{tree} holds 1.2 KiB in 3 files"


async def test_dir_size_warns_and_goes_critical_at_its_size_thresholds(tree):
    [warn] = await run({"kind": "dir_size", "name": "d", "path": str(tree), "warning": "1KB", "critical": "2KB"})
    [crit] = await run({"kind": "dir_size", "name": "d", "path": str(tree), "warning": "1KB", "critical": "1KiB"})
    assert (warn.status, crit.status) == ("warning", "critical")


async def test_dir_size_of_a_missing_path_is_unknown_and_says_so(tmp_path):
    missing = str(tmp_path / "nope")
    [result] = await run({"kind": "dir_size", "name": "d", "path": missing})
    assert result.status == "unknown"
    assert result.message == f"path {missing!r} does not exist"


async def test_dir_size_of_a_file_is_unknown(tmp_path):
    path = write(tmp_path / "f", 10)
    [result] = await run({"kind": "dir_size", "name": "d", "path": str(path)})
    assert result.status == "unknown"
    assert "Not a directory" in result.message


async def test_dir_size_of_an_empty_directory_is_zero(tmp_path):
    [result] = await run({"kind": "dir_size", "name": "d", "path": str(tmp_path), "warning": 1})
    assert result.status == "ok"
    assert result.metrics == {"size_bytes": 0.0, "files": 0.0}


def test_files_vanishing_during_the_walk_are_ignored(tmp_path):
    for name in ("a", "b", "c", "d"):
        write(tmp_path / name, 1)
        write(tmp_path / f"dir-{name}" / "inner", 1)
    unreadable: list[str] = []
    seen = []
    for entry, _ in walk_files(str(tmp_path), unreadable):
        if not seen:  # after the first file, everything else disappears
            for other in tmp_path.iterdir():
                if other.is_dir():
                    shutil.rmtree(other)
                elif other.name != entry.name:
                    other.unlink()
        seen.append(entry.name)
    assert len(seen) == 1
    assert unreadable == []
    assert total_size(str(tmp_path)) == (1, 1, [])


def test_dir_size_refuses_a_warning_beyond_critical():
    with pytest.raises(ValidationError) as e:
        DirSizeConfig.model_validate({"kind": "dir_size", "name": "d", "path": "/", "critical": "1GB",
                                      "warning": "2GB"})
    assert [err["loc"] for err in e.value.errors()] == [("warning",)]


def test_dir_size_refuses_a_size_it_cannot_read():
    with pytest.raises(ValidationError) as e:
        DirSizeConfig.model_validate({"kind": "dir_size", "name": "d", "path": "/", "warning": "lots"})
    assert e.value.errors()[0]["loc"] == ("warning",)


@pytest.fixture
def backups(tmp_path: Path) -> Path:
    root = tmp_path / "backups"
    write(root / "db-1.tar.gz", 10, hours_old=50)
    write(root / "2025" / "db-2.tar.gz", 10, hours_old=30)
    write(root / "2025" / "notes.txt", 10, hours_old=1)
    newer = write(tmp_path / "elsewhere" / "db-9.tar.gz", 10, hours_old=0)
    (root / "latest.tar.gz").symlink_to(newer)  # a link is not a backup
    return root


async def test_file_age_is_the_age_of_the_newest_matching_file(backups):
    [result] = await run({"kind": "file_age", "name": "backup", "path": str(backups), "pattern": "*.tar.gz",
                          "warning": "26h", "critical": "48h"})
    assert result.status == "warning"
    assert result.target == str(backups)
    assert result.metrics == {"age_seconds": 30 * HOUR, "files": 2.0}
    assert result.message == f"newest {os.path.join('2025', 'db-2.tar.gz')} is 30 h old (2 matching)"
    assert result.details["newest"] == str(backups / "2025" / "db-2.tar.gz")


async def test_file_age_past_critical_is_critical(backups):
    [result] = await run({"kind": "file_age", "name": "backup", "path": str(backups), "pattern": "*.tar.gz",
                          "critical": "1d"})
    assert result.status == "critical"


async def test_file_age_matches_every_file_by_default(backups):
    [result] = await run({"kind": "file_age", "name": "backup", "path": str(backups), "warning": "2h"})
    assert result.status == "ok"
    assert result.metrics == {"age_seconds": 1 * HOUR, "files": 3.0}


async def test_file_age_with_no_matching_file_is_critical(backups):
    [result] = await run({"kind": "file_age", "name": "backup", "path": str(backups), "pattern": "*.sql"})
    assert result.status == "critical"
    assert result.message == f"no file matching '*.sql' under {backups}"
    assert result.metrics == {"files": 0.0}


async def test_file_age_of_a_missing_path_is_unknown(tmp_path):
    [result] = await run({"kind": "file_age", "name": "backup", "path": str(tmp_path / "gone")})
    assert result.status == "unknown"
    assert "does not exist" in result.message


async def test_file_age_of_a_file_from_the_future_is_zero(tmp_path):
    write(tmp_path / "f", 1, hours_old=-5)
    [result] = await run({"kind": "file_age", "name": "f", "path": str(tmp_path)})
    assert result.metrics["age_seconds"] == 0.0


def test_file_age_refuses_a_warning_beyond_critical_and_unknown_keys():
    with pytest.raises(ValidationError) as e:
        FileAgeConfig.model_validate({"kind": "file_age", "name": "b", "path": "/", "critical": "1d",
                                      "warning": "2d", "glob": "*"})
    assert sorted(err["loc"] for err in e.value.errors()) == [("glob",), ("warning",)]
