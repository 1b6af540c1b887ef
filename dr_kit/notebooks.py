"""Running the walkthrough notebooks unattended (``dr-kit notebooks run``).

Each notebook runs with papermill in a fresh kernel, in order, against the lab (default)
or real clusters (parameters).  The executed notebooks and an HTML rendering of each go to
the output folder; each notebook records its headline results in ``results/NN_*.json``
there, from which a short summary is printed.  What the kernels write to stderr goes to
``kernels.log`` there.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from dr_kit.errors import DrKitError, InvalidInput
from dr_kit.shop.schema import CURRENCY

NOTEBOOKS = ("01_protect_namespace", "02_journal_lag", "03_snapshot_group", "04_snapshot_analytics",
             "05_dr_drill", "06_many_applications")


def notebook_dir() -> Path:
    """The walkthrough notebooks: ``$DR_KIT_NOTEBOOKS``, else those the package carries
    (an installed wheel), else the checkout's ``notebooks/``."""
    from dr_kit.resources import resource_dir

    return resource_dir("notebooks", env="DR_KIT_NOTEBOOKS")


def declared_parameters(path: Path) -> dict[str, Any]:
    import papermill as pm

    return pm.inspect_notebook(str(path))


def prepare_parameters(parameters: dict[str, Any] | None) -> dict[str, Any]:
    """The parameters for every notebook.  The kernels run in the output folder, so a
    relative lab folder is resolved here, against the caller's working directory."""
    params = dict(parameters or {})
    params["lab_dir"] = str(Path(params.get("lab_dir") or ".dr-lab").resolve())
    for key in ("kubeconfig", "results_file"):
        if params.get(key):
            params[key] = str(Path(str(params[key])).expanduser().resolve())
    return params


def select(only: list[str] | None = None, src: Path | None = None) -> list[Path]:
    """The notebooks to run, in order (``only``: name prefixes such as ``03``)."""
    names = [n for n in NOTEBOOKS if not only or any(n.startswith(o) for o in only)]
    if only and not names:
        raise InvalidInput(f"no notebook matches {only}; notebooks: {', '.join(NOTEBOOKS)}")
    src = src or notebook_dir()
    paths = [src / f"{n}.ipynb" for n in names]
    missing = [p for p in paths if not p.is_file()]
    if missing:
        raise InvalidInput(f"notebook {missing[0]} not found; set DR_KIT_NOTEBOOKS to the "
                           "notebooks folder")
    return paths


def check_parameters(paths: list[Path], parameters: dict[str, Any] | None) -> dict[str, set[str]]:
    """Notebook -> the parameters it declares; a parameter that none of them declares is
    refused (a misspelt ``-p lab_dri /x`` must not quietly run against ``.dr-lab``)."""
    declared = {p.stem: set(declared_parameters(p)) for p in paths}
    known = set().union(*declared.values()) if declared else set()
    unknown = sorted(k for k in (parameters or {}) if k not in known)
    if unknown:
        raise InvalidInput(f"unknown notebook parameter{'s' if len(unknown) > 1 else ''} "
                           f"{', '.join(unknown)}: the notebooks run declare "
                           f"{', '.join(sorted(known - {'results_file', 'interactive'}))}")
    return declared


def run_all(out: str | os.PathLike[str], parameters: dict[str, Any] | None = None, *,
            only: list[str] | None = None, progress: Callable[[str], None] | None = None,
            html: bool = True, notebooks: str | os.PathLike[str] | None = None
            ) -> dict[str, Any]:
    """Execute the notebooks in order; returns the recorded results per notebook.

    Every parameter must be declared by at least one of the notebooks run, checked before
    anything starts; each notebook gets the parameters it declares.  ``notebooks`` is the
    folder to run them from (default: :func:`notebook_dir`).
    """
    import papermill as pm

    say = progress or (lambda s: None)
    paths = select(only, Path(notebooks) if notebooks else None)
    declared = check_parameters(paths, parameters)
    params = prepare_parameters(parameters)
    out = Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {}
    for path in paths:
        name = path.stem
        mine = {k: v for k, v in params.items() if k in declared[name]}
        mine["results_file"] = str(out / "results" / f"{name}.json")
        mine["interactive"] = False
        t0 = time.monotonic()
        say(f"running {name} ...")
        try:
            with _kernel_log(out / "kernels.log"):
                pm.execute_notebook(str(path), str(out / f"{name}.ipynb"), parameters=mine,
                                    kernel_name="python3", progress_bar=False, cwd=str(out))
        except pm.PapermillExecutionError as e:
            raise DrKitError(f"notebook {name} failed in cell {e.exec_count}: {e.ename}: "
                             f"{str(e.evalue).splitlines()[0] if e.evalue else ''} (see {out / (name + '.ipynb')})") from None
        if html:
            _to_html(out / f"{name}.ipynb")
        results[name] = json.loads((out / "results" / f"{name}.json").read_text())
        say(f"  {name} done in {time.monotonic() - t0:.1f} s")
    (out / "summary.json").write_text(json.dumps(results, indent=2, default=str))
    return results


def copy_notebooks(dest: str | os.PathLike[str], *, force: bool = False) -> list[Path]:
    """Editable copies of the notebooks (and their ``py:percent`` twins) in ``dest``.

    Refuses, before copying anything, to overwrite a file that is already there unless
    ``force``.
    """
    import shutil

    src = notebook_dir()
    files = [src / f"{n}{ext}" for n in NOTEBOOKS for ext in (".ipynb", ".py")
             if (src / f"{n}{ext}").is_file()]
    target = Path(dest)
    if target.exists() and not target.is_dir():
        raise InvalidInput(f"{target} is a file, not a folder")
    clash = [f.name for f in files if (target / f.name).exists()]
    if clash and not force:
        raise InvalidInput(f"{target} already has {', '.join(clash[:3])}"
                           f"{' ...' if len(clash) > 3 else ''}; pass --force to overwrite")
    target.mkdir(parents=True, exist_ok=True)
    return [Path(shutil.copyfile(f, target / f.name)) for f in files]


@contextlib.contextmanager
def _kernel_log(path: Path) -> Iterator[None]:
    """Send what the kernel processes write to stderr (they inherit it) to a log file;
    cell errors still surface through papermill."""
    sys.stderr.flush()
    saved = os.dup(2)
    with open(path, "ab") as log:
        os.dup2(log.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def _to_html(nb_path: Path) -> None:
    import nbformat
    from nbconvert import HTMLExporter

    body, _ = HTMLExporter().from_notebook_node(nbformat.read(str(nb_path), as_version=4))
    nb_path.with_suffix(".html").write_text(body)


def summary_lines(results: dict[str, Any]) -> list[str]:
    """The short summary printed at the end of a run."""
    lines = []
    r1 = results.get("01_protect_namespace")
    if r1:
        lines.append(f"protected PVCs: {', '.join(r1.get('protected_pvcs') or [])} -> backup PVCs "
                     f"{', '.join(r1.get('backup_pvcs') or [])} in {r1.get('seconds_to_protect')} s")
    r2 = results.get("02_journal_lag")
    if r2:
        c = r2.get("collapse", {})
        lines.append(f"journal lag (steady): p50 {_ms(r2.get('lag_p50_ms'))}, p99 {_ms(r2.get('lag_p99_ms'))}"
                     f" [{r2.get('lag_source') or 'source unknown'}]")
        skipped = [p.get("phase") for p in r2.get("skipped_phases") or []]
        if skipped:
            lines.append(f"  skipped without the lab's controls: {', '.join(map(str, skipped))}")
        if c:
            lines.append("collapse experiment: " + "; ".join(
                f"{k}: {v['collapsed']} collapsed / {v['trials']} (corrupt {v['corrupt']})" for k, v in c.items()))
    r3 = results.get("03_snapshot_group")
    if r3:
        lines.append(f"snapshot group {r3.get('name')}: consistency point {r3.get('position')} at "
                     f"{r3.get('point_time')}, one sequence for all members: {r3.get('one_sequence')}")
    r4 = results.get("04_snapshot_analytics")
    if r4:
        total = r4.get("revenue_total_cents")
        lines.append(f"revenue in the snapshot: {total / 100:,.2f} {CURRENCY}" if total is not None else "revenue: n/a")
        lines.append(f"  {r4.get('stamp')}")
    r5 = results.get("05_dr_drill")
    if r5:
        fb = r5.get("failback") or {}
        rto = r5.get("rto_s")
        lines.append(f"DR cycle: {'PASS' if r5.get('ok') else 'FAIL'}; failover RTO "
                     f"{f'{rto:.2f} s' if isinstance(rto, (int, float)) else 'not run'}, orders lost "
                     f"{r5.get('rpo_orders_lost')}, failback resync {fb.get('resync_bytes')} of "
                     f"{fb.get('volume_bytes')} bytes; skipped: "
                     f"{', '.join(s.get('step', '') for s in r5.get('skipped') or []) or 'nothing'}")
    r6 = results.get("06_many_applications")
    if r6:
        from dr_kit.walkthrough import many_applications_line

        lines.append(many_applications_line(r6))
    return lines


def _ms(v: Any) -> str:
    return f"{v:.1f} ms" if isinstance(v, (int, float)) else "unknown"
