"""Installing a certificate and key atomically, keeping the previous ones to restore.

Each new file is written beside its target (same directory, so same filesystem), fsynced,
given its mode (the key 0600) and the previous file's owner, then renamed over the target;
both renames happen only after both files are written. The previous bytes stay in memory for
`restore` and on disk as PATH.previous (mode 0600) for the owner.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Saved:
    """One target as it was before the install (`data` None: there was no file)."""

    path: Path
    data: bytes | None
    mode: int = 0o644
    uid: int = -1
    gid: int = -1


@dataclass(frozen=True)
class Backup:
    saved: tuple[Saved, ...]

    @property
    def kept(self) -> list[str]:
        """The PATH.previous copies on disk."""
        return [f"{s.path}.previous" for s in self.saved if s.data is not None]


def _save(path: Path) -> Saved:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return Saved(path, None)
    with open(fd, "rb") as f:
        st = os.fstat(f.fileno())
        return Saved(path, f.read(), st.st_mode & 0o7777, st.st_uid, st.st_gid)


def _stage(path: Path, data: bytes, mode: int, uid: int = -1, gid: int = -1) -> str:
    """A fsynced temporary file beside `path` holding `data` with `mode`; its name."""
    path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        os.fchmod(fd, mode)
        if os.geteuid() == 0 and uid != -1:
            os.fchown(fd, uid, gid)
        with open(fd, "wb", closefd=False) as out:
            out.write(data)
            out.flush()
            os.fsync(fd)
    except BaseException:
        os.unlink(tmp)
        raise
    finally:
        os.close(fd)
    return tmp


def _sync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _replace_all(files: list[tuple[Path, bytes, int, int, int]]) -> None:
    staged = []
    try:
        for path, data, mode, uid, gid in files:
            staged.append((_stage(path, data, mode, uid, gid), path))
    except BaseException:
        for tmp, _ in staged:
            os.unlink(tmp)
        raise
    for tmp, path in staged:
        os.replace(tmp, path)
    for folder in {path.parent for _, path in staged}:
        _sync_dir(folder)


def install(cert_path: Path, chain: bytes, key_path: Path, key: bytes) -> Backup:
    """Write `chain` (0644) and `key` (0600); return what was there before.

    Raises:
        OSError: a file cannot be read or written (nothing was replaced unless both were staged).
    """
    backup = Backup((_save(cert_path), _save(key_path)))
    _replace_all([(Path(f"{s.path}.previous"), s.data, 0o600, s.uid, s.gid)
                  for s in backup.saved if s.data is not None])
    old = {s.path: s for s in backup.saved}
    _replace_all([(cert_path, chain, 0o644, old[cert_path].uid, old[cert_path].gid),
                  (key_path, key, 0o600, old[key_path].uid, old[key_path].gid)])
    return backup


def restore(backup: Backup) -> None:
    """Put back what `install` replaced (and remove files that did not exist before)."""
    _replace_all([(s.path, s.data, s.mode, s.uid, s.gid) for s in backup.saved if s.data is not None])
    for s in backup.saved:
        if s.data is None:
            s.path.unlink(missing_ok=True)
