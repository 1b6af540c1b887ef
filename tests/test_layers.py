"""The layers point one way: the import-linter contracts in pyproject.toml hold.

The library (sites, lag, snapshots, analytics, walkthrough, operator, commands, ...)
imports nothing of ``dr_kit.lab``, directly or through another module; the storage engine
imports nothing of Kubernetes, widgets or plots; the shop's history generator knows nothing
of the workload that seeds it.  ``make lint`` runs the same check.
"""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_import_contracts_hold(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import tomllib

    from importlinter.cli import lint_imports

    contracts = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"][
        "contracts"]
    rc = lint_imports(config_filename=str(ROOT / "pyproject.toml"), no_logo=True,
                      cache_dir=str(tmp_path))
    out = capsys.readouterr().out
    assert rc == 0, out
    assert out.count(" KEPT") == len(contracts) >= 3 and "BROKEN" not in out


def test_every_library_module_is_under_the_contract() -> None:
    """A new module of dr_kit is library (and may not import the lab) unless it is the lab
    or the command line's entry point, which registers the lab's commands."""
    import pkgutil
    import tomllib

    import dr_kit

    conf = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    (contract,) = [c for c in conf["contracts"] if c["forbidden_modules"] == ["dr_kit.lab"]]
    modules = {f"dr_kit.{m.name}" for m in pkgutil.iter_modules(dr_kit.__path__)}
    assert set(contract["source_modules"]) == modules - {"dr_kit.lab", "dr_kit.cli"}
