"""`dir_size`: total size of the regular files under a directory.

Symlinks are never followed (a link to a big file elsewhere, or a loop, costs nothing), a file
with several hard links counts once, and files that vanish during the walk are ignored.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from typing import Literal

from ..errors import CheckError
from ..units import Size, format_size
from .base import Check, CheckConfig, CheckContext, CheckResult, check, judge, threshold_pair


def walk_files(root: str, unreadable: list[str]) -> Iterator[tuple[os.DirEntry[str], os.stat_result]]:
    """Regular files under `root` with their lstat, without following symlinks.

    Paths below `root` that cannot be read are appended to `unreadable` and skipped.

    Raises:
        CheckError: `root` does not exist or cannot be listed.
    """
    stack = [root]
    while stack:
        path = stack.pop()
        try:
            entries = os.scandir(path)
        except FileNotFoundError:
            if path == root:
                raise CheckError(f"path {root!r} does not exist") from None
            continue  # vanished during the walk
        except OSError as e:
            if path == root:
                raise CheckError(f"cannot list {root!r}: {e.strerror}") from e
            unreadable.append(path)
            continue
        with entries:
            for entry in entries:
                try:
                    if entry.is_dir(follow_symlinks=False):
                        stack.append(entry.path)
                    elif entry.is_file(follow_symlinks=False):
                        yield entry, entry.stat(follow_symlinks=False)
                except FileNotFoundError:
                    continue
                except OSError:
                    unreadable.append(entry.path)


def total_size(root: str) -> tuple[int, int, list[str]]:
    """Bytes and count of the regular files under `root`, and the paths that could not be read."""
    unreadable: list[str] = []
    linked: set[tuple[int, int]] = set()
    size = files = 0
    for _, st in walk_files(root, unreadable):
        if st.st_nlink > 1:
            if (st.st_dev, st.st_ino) in linked:
                continue
            linked.add((st.st_dev, st.st_ino))
        size += st.st_size
        files += 1
    return size, files, unreadable


class DirSizeConfig(CheckConfig):
    kind: Literal["dir_size"]
    path: str
    critical: Size | None = None
    warning: Size | None = None

    _size = threshold_pair("warning", "critical")


@check("dir_size")
class DirSizeCheck(Check):
    Config = DirSizeConfig
    config: DirSizeConfig

    @property
    def target(self) -> str:
        return self.config.path

    async def collect(self, ctx: CheckContext) -> list[CheckResult]:
        path = self.config.path
        size, files, unreadable = await asyncio.to_thread(total_size, path)
        status = judge(size, self.config.warning, self.config.critical)
        message = f"{path} holds {format_size(size)} in {files:,} files"
        details = {}
        if unreadable:
            message += f" ({len(unreadable)} unreadable paths skipped)"
            details["unreadable"] = unreadable[:20]
        return [self.result(path, status, message, {"size_bytes": float(size), "files": float(files)}, **details)]
