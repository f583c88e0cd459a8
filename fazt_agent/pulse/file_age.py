"""`file_age`: how old the newest matching file under a directory is (are backups still made?).

The directory is searched recursively without following symlinks; `pattern` is a glob matched
against file names. No matching file at all is critical: a missing backup is a problem.
"""

from __future__ import annotations

import asyncio
import os
from fnmatch import fnmatchcase
from typing import Literal

from ..units import Duration, format_duration
from .base import Check, CheckConfig, CheckContext, CheckResult, check, judge, threshold_pair
from .dir_size import walk_files


def newest(root: str, pattern: str) -> tuple[str | None, float, int, list[str]]:
    """The newest file matching `pattern` under `root`: path, mtime, matching count, unreadable paths."""
    unreadable: list[str] = []
    best, best_mtime, count = None, 0.0, 0
    for entry, st in walk_files(root, unreadable):
        if fnmatchcase(entry.name, pattern):
            count += 1
            if best is None or st.st_mtime > best_mtime:
                best, best_mtime = entry.path, st.st_mtime
    return best, best_mtime, count, unreadable


class FileAgeConfig(CheckConfig):
    kind: Literal["file_age"]
    path: str
    pattern: str = "*"
    critical: Duration | None = None
    warning: Duration | None = None

    _age = threshold_pair("warning", "critical")


@check("file_age")
class FileAgeCheck(Check):
    Config = FileAgeConfig
    config: FileAgeConfig

    @property
    def target(self) -> str:
        return self.config.path

    async def collect(self, ctx: CheckContext) -> list[CheckResult]:
        c = self.config
        found, mtime, count, unreadable = await asyncio.to_thread(newest, c.path, c.pattern)
        details = {"unreadable": unreadable[:20]} if unreadable else {}
        if found is None:
            return [self.result(c.path, "critical", f"no file matching {c.pattern!r} under {c.path}",
                                {"files": 0.0}, **details)]
        age = max(ctx.clock.now().timestamp() - mtime, 0.0)
        message = f"newest {os.path.relpath(found, c.path)} is {format_duration(age)} old ({count:,} matching)"
        return [self.result(c.path, judge(age, c.warning, c.critical), message,
                            {"age_seconds": age, "files": float(count)}, newest=found, **details)]
