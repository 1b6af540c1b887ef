"""The layers point one way: the import-linter contracts in pyproject.toml hold.

The library (sites, lag, snapshots, analytics, walkthrough, operator, commands, ...)
imports nothing of ``dr_kit.lab``, directly or through another module; the storage engine
imports nothing of Kubernetes, widgets or plots.  ``make lint`` runs the same check.
"""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_import_contracts_hold(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from importlinter.cli import lint_imports

    rc = lint_imports(config_filename=str(ROOT / "pyproject.toml"), no_logo=True,
                      cache_dir=str(tmp_path))
    out = capsys.readouterr().out
    assert rc == 0, out
    assert out.count(" KEPT") == 2 and "BROKEN" not in out
