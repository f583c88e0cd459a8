"""`fazt-agent init DIR`: a new ops folder from the shipped defaults."""

from __future__ import annotations

import shutil
from pathlib import Path

from .config import DEFINITION_FOLDERS, shipped_defaults

GITIGNORE = "# fazt-agent's state: the database, locks and keys stay out of git\ndata/\n*.db\n*.db-wal\n*.db-shm\n"


def example_config() -> str:
    """The commented example configuration shipped with the package."""
    return (shipped_defaults() / "config.example.toml").read_text()


def scaffold(directory: Path, *, force: bool = False) -> list[Path]:
    """Create `directory` with config.toml, the four definition folders and a .gitignore.

    Existing definition files are kept (they are the owner's); config.toml is only replaced
    with `force`. Returns the paths written.

    Raises:
        FileExistsError: config.toml exists and `force` is false.
    """
    config = directory / "config.toml"
    if config.exists() and not force:
        raise FileExistsError(f"{config} already exists")
    directory.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    text = example_config().replace('# data_dir = "/var/lib/fazt-agent"', 'data_dir = "data"', 1)
    config.write_text(text)
    written.append(config)
    source = shipped_defaults()
    for name in DEFINITION_FOLDERS:
        target = directory / name
        target.mkdir(exist_ok=True)
        for item in sorted((source / name).iterdir()):
            if item.is_file() and not (target / item.name).exists():
                shutil.copy2(item, target / item.name)
                written.append(target / item.name)
    gitignore = directory / ".gitignore"
    if not gitignore.exists():
        gitignore.write_text(GITIGNORE)
        written.append(gitignore)
    return written
