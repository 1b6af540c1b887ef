"""``dr-kit query`` without a lab: parameters, and refusals that happen before anything is
opened or restored (the end-to-end runs are in test_snapshots.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from dr_kit import cli
from dr_kit.commands.query import parse_params
from dr_kit.errors import InvalidInput


def test_parameters_are_typed_and_checked() -> None:
    assert parse_params(["k=5", "x=-2.5", "name=web", "empty=", "q=a=b"]) == {
        "k": 5, "x": -2.5, "name": "web", "empty": "", "q": "a=b"}
    for bad in (["novalue"], ["1x=2"], ["a b=1"], ["k=1", "k=2"]):
        with pytest.raises(InvalidInput):
            parse_params(bad)


@pytest.mark.parametrize(("sql", "msg"), [
    ("DELETE FROM orders", "only SELECT"),
    ("UPDATE orders SET channel = 'x'", "only SELECT"),
    ("WITH d AS (DELETE FROM orders RETURNING *) SELECT * FROM d", "DELETE"),
    ("SELECT * INTO copy FROM orders", "INTO"),
    ("SELECT 1; DROP TABLE orders", "one statement"),
    ("SELECT E'\\''; COMMIT; DELETE FROM orders; --'", "one statement"),
    ("PRAGMA writable_schema = 1", "only SELECT"),
    ("", "empty query"),
])
def test_writes_are_refused_before_any_site_is_touched(tmp_path: Path, sql: str, msg: str,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    # the lab directory does not exist: the refusal comes first, nothing is opened or restored
    rc = cli.main(["query", "-n", "shop", "--snapshot", "s", sql, "--dir", str(tmp_path / "none")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and err[0].startswith("error: ") and msg in err[0], err
    assert not (tmp_path / "none").exists()


def test_site_options_are_exclusive(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc = cli.main(["query", "-n", "shop", "--snapshot", "s", "SELECT 1", "--dir", str(tmp_path),
                   "--kubeconfig", str(tmp_path / "k")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "either --dir" in err[0]
    rc = cli.main(["query", "-n", "shop", "--snapshot", "s", "SELECT 1", "--dir",
                   str(tmp_path / "none")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "no lab in" in err[0]
