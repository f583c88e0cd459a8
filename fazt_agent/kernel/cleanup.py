"""`cleanup`: delete (or gzip) old files under a root the policy allows.

The arguments may come from an LLM, so the safety lives here, not in the caller:

- the root is resolved (realpath) and must be an allowed root or inside one, by path components;
- the walk never follows a symlink and stays on the root's filesystem; symlinks are never touched;
- apply touches only the planned files, reaching each one through directory descriptors opened
  component by component with O_NOFOLLOW, and re-checks inode, size, mtime and ctime first, so
  a directory swapped for a symlink after planning (or a file that changed) is skipped, reported;
- directories, the root included, are never removed.
"""

from __future__ import annotations

import asyncio
import gzip
import heapq
import itertools
import os
import shutil
import stat
from collections import Counter
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from pathlib import PurePosixPath
from typing import Any, Iterator, Literal

from pydantic import Field, field_validator

from ..errors import ActionError
from ..units import Duration, Size, format_duration, format_size
from .base import RISK_ORDER, Action, ActionArgs, ActionContext, Outcome, Plan, action
from .settings import CleanupSettings

_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class CleanupArgs(ActionArgs):
    root: str | None = None                  # None: every allowed root
    older_than: Duration = 0.0
    min_size: Size = 0
    pattern: str = Field("*", min_length=1, max_length=256)   # fnmatch on the file name
    mode: Literal["delete", "compress"] = "delete"
    max_files: int = Field(10000, ge=1, le=100000)

    @field_validator("pattern")
    @classmethod
    def _name_only(cls, value: str) -> str:
        if "/" in value:
            raise ValueError("pattern matches file names only; it cannot contain '/'")
        return value


def inside(path: str, root: str) -> bool:
    """Whether `path` is `root` or below it, comparing whole components (/srv/app2 is not in /srv/app)."""
    p, r = PurePosixPath(path).parts, PurePosixPath(root).parts
    return p[:len(r)] == r


def allowed_roots(ctx: ActionContext) -> list[str]:
    """The policy's cleanup roots, resolved.

    Raises:
        ActionError(permanent=True): none are configured, or one is relative or "/".
    """
    if not ctx.constraints.cleanup_roots:
        raise ActionError("no cleanup roots are allowed; add them to [constraints] cleanup_roots in a policy file")
    resolved = []
    for root in ctx.constraints.cleanup_roots:
        real = os.path.realpath(root)
        if not root.is_absolute() or real == "/":
            raise ActionError(f"cleanup root {str(root)!r} in [constraints] must be an absolute path below '/'")
        resolved.append(real)
    return resolved


def target_roots(root: str | None, ctx: ActionContext) -> list[str]:
    """The resolved roots to clean: `root` if allowed, else every allowed root (nested ones dropped).

    Raises:
        ActionError(permanent=True): `root` is relative, has '..', is not a directory or not allowed.
    """
    allowed = allowed_roots(ctx)
    if root is None:
        unique = sorted(set(allowed))
        return [r for r in unique if not any(o != r and inside(r, o) for o in unique)]
    shown = f"(allowed roots: {', '.join(allowed)})"
    if "\x00" in root or not root.startswith("/") or ".." in root.split("/"):
        raise ActionError(f"root {root!r} must be an absolute path without '..' {shown}")
    real = os.path.realpath(root)
    if not any(inside(real, a) for a in allowed):
        raise ActionError(f"root {root!r} (resolves to {real!r}) is outside the allowed roots {shown}")
    if not os.path.isdir(real):
        raise ActionError(f"root {root!r} is not a directory")
    return [real]


def open_below(fd: int, names: tuple[str, ...]) -> int:
    """A new descriptor for directory `names` below directory `fd`, never following a symlink."""
    current = os.dup(fd)
    try:
        for name in names:
            child = os.open(name, _DIR, dir_fd=current)
            os.close(current)
            current = child
    except BaseException:
        os.close(current)
        raise
    return current


def open_dir(path: str) -> int:
    """A descriptor for absolute `path`, opened from '/' one component at a time with O_NOFOLLOW."""
    top = os.open("/", _DIR)
    try:
        return open_below(top, PurePosixPath(path).parts[1:])
    finally:
        os.close(top)


@dataclass
class _Scan:
    skipped_symlinks: int = 0
    skipped_mounts: int = 0
    matched: int = 0
    unreadable: list[str] = field(default_factory=list)


def _walk(root: str, scan: _Scan) -> Iterator[tuple[str, os.stat_result]]:
    """(path, lstat) of every regular file below `root` on its filesystem; symlinks are counted, not followed."""
    try:
        top = open_dir(root)
    except OSError:
        scan.unreadable.append(root)
        return
    try:
        device = os.fstat(top).st_dev
        pending: list[tuple[str, ...]] = [()]
        while pending:
            parts = pending.pop()
            try:
                fd = open_below(top, parts)
                try:
                    with os.scandir(fd) as listing:
                        entries = [(e.name, e.stat(follow_symlinks=False)) for e in listing]
                finally:
                    os.close(fd)
            except OSError:
                scan.unreadable.append(os.path.join(root, *parts))
                continue
            for name, st in entries:
                if stat.S_ISLNK(st.st_mode):
                    scan.skipped_symlinks += 1
                elif stat.S_ISDIR(st.st_mode):
                    if st.st_dev == device:
                        pending.append((*parts, name))
                    else:
                        scan.skipped_mounts += 1
                elif stat.S_ISREG(st.st_mode):
                    yield os.path.join(root, *parts, name), st
    finally:
        os.close(top)


def _scan(roots: list[str], args: CleanupArgs, now: float) -> tuple[list[tuple[str, os.stat_result]], _Scan]:
    scan = _Scan()

    def wanted(path: str, st: os.stat_result) -> bool:
        name = os.path.basename(path)
        ok = (fnmatchcase(name, args.pattern) and st.st_size >= args.min_size
              and now - st.st_mtime >= args.older_than and not (args.mode == "compress" and name.endswith(".gz")))
        scan.matched += ok
        return ok

    found = (item for item in itertools.chain.from_iterable(_walk(r, scan) for r in roots) if wanted(*item))
    oldest = heapq.nsmallest(args.max_files, found, key=lambda item: (item[1].st_mtime, item[0]))
    return oldest, scan


def _age(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds // size:.0f}{unit}"
    return format_duration(seconds)


def _summary(args: CleanupArgs, roots: list[str], count: int, total: int, matched: int) -> str:
    filters = " ".join(filter(None, [
        f"matching {args.pattern!r}" if args.pattern != "*" else "",
        f"of at least {format_size(args.min_size)}" if args.min_size else "",
        f"older than {_age(args.older_than)}" if args.older_than else ""]))
    where = f"under {', '.join(roots)}"
    if not count:
        return f"nothing to {args.mode} {where}" + (f" (no file {filters})" if filters else "")
    text = f"{args.mode} {count} file{'s' if count != 1 else ''} ({format_size(total)}) {filters} {where}"
    return " ".join(text.split()) + (f" (the oldest {count} of {matched})" if matched > count else "")


class _Skip(Exception):
    """A planned file that is left alone; the message is the reason."""


def _check(st: os.stat_result, planned: dict[str, Any]) -> None:
    if not stat.S_ISREG(st.st_mode) or (st.st_ino, st.st_size, st.st_mtime, st.st_ctime) != \
            (planned["ino"], planned["size"], planned["mtime"], planned["ctime"]):
        raise _Skip("changed since the plan")


def _compress(dfd: int, name: str, planned: dict[str, Any]) -> int:
    """Gzip `name` to `name.gz` beside it, then remove `name`; the bytes saved."""
    src = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=dfd)
    try:
        st = os.fstat(src)
        _check(st, planned)
        try:
            dst = os.open(name + ".gz", os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600,
                          dir_fd=dfd)
        except FileExistsError:
            raise _Skip(f"{name}.gz already exists") from None
        try:
            with open(src, "rb", closefd=False) as data, open(dst, "wb", closefd=False) as out, \
                    gzip.GzipFile(filename=name, mode="wb", fileobj=out, mtime=int(st.st_mtime)) as packed:
                shutil.copyfileobj(data, packed, 1 << 20)
            os.fchmod(dst, stat.S_IMODE(st.st_mode))
            if os.geteuid() == 0:
                os.fchown(dst, st.st_uid, st.st_gid)
            os.utime(dst, ns=(st.st_atime_ns, st.st_mtime_ns))
            os.fsync(dst)
            saved = st.st_size - os.fstat(dst).st_size
            _check(os.stat(name, dir_fd=dfd, follow_symlinks=False), planned)  # not written to meanwhile
            os.unlink(name, dir_fd=dfd)
            return saved
        except BaseException:
            os.unlink(name + ".gz", dir_fd=dfd)
            raise
        finally:
            os.close(dst)
    finally:
        os.close(src)


def _one(dfd: int, name: str, planned: dict[str, Any], mode: str) -> int:
    if mode == "compress":
        return _compress(dfd, name, planned)
    _check(os.stat(name, dir_fd=dfd, follow_symlinks=False), planned)
    os.unlink(name, dir_fd=dfd)
    return planned["size"]


def _execute(roots: list[str], files: list[dict[str, Any]], mode: str) -> tuple[int, int, list[dict[str, str]], int]:
    """Act on exactly the planned files; (bytes freed, files done, skipped, failures)."""
    freed = done = failures = 0
    skipped: list[dict[str, str]] = []
    by_dir: dict[str, list[dict[str, Any]]] = {}
    for planned in files:
        path = planned["path"]
        if os.path.normpath(path) == path and any(path != r and inside(path, r) for r in roots):
            by_dir.setdefault(os.path.dirname(path), []).append(planned)
        else:
            skipped.append({"path": path, "reason": "not below a planned root"})
    for directory, members in by_dir.items():
        try:
            dfd = open_dir(directory)
        except OSError as e:
            reason = f"its directory cannot be opened without following a symlink ({e.strerror})"
            skipped += [{"path": planned["path"], "reason": reason} for planned in members]
            continue
        try:
            for planned in members:
                try:
                    freed += _one(dfd, os.path.basename(planned["path"]), planned, mode)
                    done += 1
                except _Skip as e:
                    skipped.append({"path": planned["path"], "reason": str(e)})
                except FileNotFoundError:
                    skipped.append({"path": planned["path"], "reason": "gone since the plan"})
                except OSError as e:
                    failures += 1
                    skipped.append({"path": planned["path"], "reason": f"failed: {e.strerror or e}"})
        finally:
            os.close(dfd)
    return freed, done, skipped, failures


def _reasons(skipped: list[dict[str, str]]) -> str:
    """Why files were skipped, most common first: "27 gone since the plan, 1 changed since the plan"."""
    counts = Counter(item["reason"] for item in skipped)
    return ", ".join(f"{n} {reason}" for reason, n in counts.most_common())


@action("cleanup")
class Cleanup(Action):
    description = "Delete or gzip old files under an allowed root."
    Args = CleanupArgs
    timeout = 900.0

    def validate(self, args: dict[str, Any], ctx: ActionContext) -> CleanupArgs:
        parsed = CleanupArgs.model_validate(args)
        roots = target_roots(parsed.root, ctx)
        return parsed if parsed.root is None else parsed.model_copy(update={"root": roots[0]})

    async def plan(self, args: CleanupArgs, ctx: ActionContext) -> Plan:  # type: ignore[override]
        roots = target_roots(args.root, ctx)
        limits = CleanupSettings.model_validate(ctx.settings)
        found, scan = await asyncio.to_thread(_scan, roots, args, ctx.clock.now().timestamp())
        files = [{"path": p, "size": st.st_size, "mtime": st.st_mtime, "ino": st.st_ino, "ctime": st.st_ctime}
                 for p, st in found]
        total = sum(f["size"] for f in files)
        deleting = args.mode == "delete" and bool(files)
        big = total > limits.destructive_above or len(files) > limits.destructive_files
        return Plan(
            action=self.name, args=args.model_dump(), summary=_summary(args, roots, len(files), total, scan.matched),
            steps=[f"{args.mode} {f['path']} ({format_size(f['size'])})" for f in files],
            risk="destructive" if deleting and big else "safe", reversible=not deleting, deletes=deleting,
            noop=not files,
            details={"roots": roots, "mode": args.mode, "files": files, "total_bytes": total, "count": len(files),
                     "matched": scan.matched, "skipped_symlinks": scan.skipped_symlinks,
                     "skipped_mounts": scan.skipped_mounts, "unreadable": scan.unreadable})

    async def apply(self, plan: Plan, ctx: ActionContext) -> Outcome:
        d = plan.details
        allowed = allowed_roots(ctx)
        for root in d["roots"]:
            if not any(inside(root, a) for a in allowed):
                raise ActionError(f"planned root {root!r} is no longer inside an allowed root ({', '.join(allowed)})")
        freed, done, skipped, failures = await asyncio.to_thread(_execute, d["roots"], d["files"], d["mode"])
        verb = "deleted" if d["mode"] == "delete" else "compressed"
        details = {"freed_bytes": freed, verb: done, "skipped": skipped}
        if not done and not failures:  # nothing failed, yet nothing was done: never "done"
            planned = len(d["files"])
            why = (f"all {planned} planned file{'s were' if planned != 1 else ' was'} skipped ({_reasons(skipped)})"
                   if skipped else "the plan had no files")
            return Outcome(ok=True, changed=False, details=details, message=f"nothing {verb}: {why}")
        message = f"freed {format_size(freed)} ({done} file{'s' if done != 1 else ''})"
        if skipped:
            message += f"; skipped {len(skipped)}" + (f", {failures} failed" if failures else "")
        return Outcome(ok=not failures, message=message, details=details)

    def material_change(self, approved: Plan, fresh: Plan) -> str | None:
        a, f = approved.details, fresh.details
        if f["roots"] != a["roots"]:
            return f"the roots changed from {a['roots']} to {f['roots']}"
        if f["count"] > a["count"] * 1.1:
            return f"{f['count']} files match now, {a['count']} when approved (more than 10 % more)"
        if f["total_bytes"] > a["total_bytes"] * 1.1:
            return (f"{format_size(f['total_bytes'])} matches now, {format_size(a['total_bytes'])} when approved "
                    "(more than 10 % more)")
        if RISK_ORDER[fresh.risk] > RISK_ORDER[approved.risk]:
            return f"the risk rose from {approved.risk} to {fresh.risk}"
        return None
