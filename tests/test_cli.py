"""The ``dr-kit`` command without a lab: every area registers, a broken import shows, and
the notebooks commands refuse bad input in one line before anything starts."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from dr_kit import cli, notebooks


def test_every_area_registers_its_commands() -> None:
    ap = cli.build_parser()
    sub = next(a for a in ap._actions if a.dest == "command")
    assert {"lab", "operator", "protect", "snapshot", "lag", "query", "notebooks", "bench",
            "crashtest", "drill"} <= set(sub.choices)


def test_a_broken_module_is_not_hidden(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "dr_kit.lab.cli", None)  # import raises ImportError
    with pytest.raises(ImportError):
        cli.build_parser()


def test_notebooks_run_refuses_an_unknown_parameter_in_one_line(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc = cli.main(["notebooks", "run", "--out", str(tmp_path / "out"), "-p", "lab_dri", "/x"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and err[0].startswith("error: unknown notebook parameter")
    assert not (tmp_path / "out").exists()


def test_notebooks_copy_gives_editable_copies_and_never_overwrites_silently(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    dest = tmp_path / "mine"
    assert cli.main(["notebooks", "copy", str(dest)]) == 0
    for name in notebooks.NOTEBOOKS:
        for ext in (".ipynb", ".py"):
            assert (dest / f"{name}{ext}").read_bytes() == \
                (notebooks.notebook_dir() / f"{name}{ext}").read_bytes()
    (dest / "01_protect_namespace.ipynb").write_text("my edits")
    capsys.readouterr()
    assert cli.main(["notebooks", "copy", str(dest)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--force" in err[0]
    assert (dest / "01_protect_namespace.ipynb").read_text() == "my edits"
    assert cli.main(["notebooks", "copy", str(dest), "--force"]) == 0
    assert (dest / "01_protect_namespace.ipynb").read_text() != "my edits"
    # the copies are what `notebooks run --notebooks DIR` runs
    assert notebooks.select(["03"], dest) == [dest / "03_snapshot_group.ipynb"]
