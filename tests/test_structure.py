"""The code's layering: each layer imports only below itself, so there are no import cycles."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_no_module_imports_a_layer_that_imports_it_back() -> None:
    r = subprocess.run([sys.executable, str(ROOT / "scripts" / "import-cycles")], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.strip() == "no import cycles"


def test_the_cycle_finder_finds_a_cycle(tmp_path: Path) -> None:
    """The checker itself can fail: two modules importing each other (one only for typing)."""
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from .b import B\n")
    (pkg / "b.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .a import A\nB = 1\n")
    r = subprocess.run([sys.executable, str(ROOT / "scripts" / "import-cycles"), str(pkg)],
                       capture_output=True, text=True)
    assert r.returncode == 1
    assert "cycle: pkg.a, pkg.b" in r.stdout


def _make_plan(target: str, tmp_path: Path) -> str:
    r = subprocess.run(["make", "-n", "-B", target, f"VENV={tmp_path / 'venv'}", f"OPS={tmp_path / 'ops'}"],
                       cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    return r.stdout


def test_make_run_installs_only_what_the_daemon_needs(tmp_path: Path) -> None:
    """The test extra (pytest, a 200 MB Node wheel) is for `make test`, never for `make run`."""
    run = _make_plan("run", tmp_path)
    assert "pip install --quiet -e .\n" in run
    assert "[test]" not in run
    assert "pip install --quiet -e '.[test]'" in _make_plan("test", tmp_path)
