"""The built package works outside this checkout: build the wheel, install it into a fresh
virtual environment in a temporary folder, and run a notebook from it against a lab.

Slow (a fresh environment installs every dependency; pip's cache and the configured
indexes keep that to about a minute)."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from dr_kit import notebooks

ROOT = Path(__file__).resolve().parents[1]


def _run(cmd: list[str], *, cwd: Path, timeout: float, env: dict[str, str] | None = None
         ) -> subprocess.CompletedProcess[str]:
    p = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env)
    assert p.returncode == 0, f"{' '.join(cmd[:4])} ...: {p.stdout[-2000:]}\n{p.stderr[-2000:]}"
    return p


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    _run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(out), str(ROOT)],
         cwd=out, timeout=300)
    (whl,) = out.glob("dr_kit-*.whl")
    return whl


def test_the_wheel_carries_the_single_sources_of_data_and_notebooks(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        for f in sorted((ROOT / "data").iterdir()):
            assert z.read(f"dr_kit/_bundle/data/{f.name}") == f.read_bytes(), f.name
        for name in notebooks.NOTEBOOKS:
            for ext in (".ipynb", ".py"):
                src = ROOT / "notebooks" / f"{name}{ext}"
                assert z.read(f"dr_kit/_bundle/notebooks/{name}{ext}") == src.read_bytes()
        entry_points = z.read(next(n for n in names if n.endswith("entry_points.txt"))).decode()
    assert "drkit.array = dr_kit.sqlite.dialect:ArrayVolumeDialect" in entry_points
    assert "dr-kit = dr_kit.cli:main" in entry_points
    assert not any(n.startswith(("tests/", "data/", "notebooks/")) for n in names)


def test_installed_anywhere_it_runs_a_notebook_against_a_lab(wheel: Path, shop_lab: Path,
                                                             tmp_path: Path) -> None:
    from conftest import SHARED_RATE

    from dr_kit import snapshots
    from dr_kit.errors import NotFound
    from dr_kit.lab import site

    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", str(venv)], cwd=tmp_path, timeout=120)
    py = venv / "bin" / "python"
    _run([str(py), "-m", "pip", "install", "-q", "--no-compile", "--disable-pip-version-check",
          str(wheel)], cwd=tmp_path, timeout=600)
    work = tmp_path / "elsewhere"  # far from the checkout: nothing can come from it
    work.mkdir()
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "DR_KIT_NOTEBOOKS", "DR_KIT_DATA", "VIRTUAL_ENV")}
    where = _run([str(py), "-c", "import dr_kit, dr_kit.notebooks as n, dr_kit.shop.schema as s;"
                  "print(dr_kit.__file__); print(n.notebook_dir()); print(len(s.load_catalog()))"],
                 cwd=work, timeout=120, env=env).stdout.split()
    assert all(str(venv) in w for w in where[:2]) and int(where[2]) > 0, where
    dr_kit_cmd = str(venv / "bin" / "dr-kit")
    copied = _run([dr_kit_cmd, "notebooks", "copy", "mine"], cwd=work, timeout=120, env=env)
    shipped = [p for p in (ROOT / "notebooks").iterdir() if p.suffix in (".ipynb", ".py")]
    assert f"copied {len(shipped)} files" in copied.stdout and (work / "mine" / "03_snapshot_group.ipynb").is_file()
    try:
        run = _run([dr_kit_cmd, "notebooks", "run", "--only", "03", "--out", "out",
                    "-p", "lab_dir", str(shop_lab), "-p", "rate", str(SHARED_RATE),
                    "-p", "snapshot_name", "from-wheel"], cwd=work, timeout=600, env=env)
    finally:
        try:
            snapshots.delete_snapshot_group(site("backup", shop_lab), "from-wheel", "shop")
        except NotFound:
            pass
    assert "snapshot group from-wheel: consistency point" in run.stdout, run.stdout
    assert "one sequence for all members: True" in run.stdout
    assert (work / "out" / "03_snapshot_group.html").is_file()
