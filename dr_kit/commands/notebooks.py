"""``dr-kit notebooks run|copy``: the walkthrough end to end, unattended; editable copies."""

from __future__ import annotations

import argparse

import yaml

from dr_kit.errors import InvalidInput


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("notebooks", help="run the walkthrough notebooks unattended (papermill), "
                       "or copy them for editing")
    s = p.add_subparsers(dest="notebooks_command", required=True)
    r = s.add_parser("run", help="execute the notebooks in order, write executed copies and HTML",
                     description="Runs the notebooks against the embedded lab (started when needed) or "
                     "real clusters (-p kubeconfig PATH -p main_context C -p backup_context C).  "
                     "A parameter no notebook declares is refused before anything runs.")
    r.add_argument("--out", default="out", help="output folder (default: out)")
    r.add_argument("-p", "--parameter", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"),
                   help="a notebook parameter (value parsed as YAML: 3, 2.5, true, null, text)")
    r.add_argument("--only", action="append", help="run only notebooks starting with this (e.g. 01)")
    r.add_argument("--no-html", action="store_true", help="skip the HTML renderings")
    r.add_argument("--notebooks", metavar="DIR", help="run the notebooks in DIR (e.g. copies "
                   "made with `dr-kit notebooks copy DIR`) instead of the package's")
    r.set_defaults(func=_run)
    c = s.add_parser("copy", help="copy the notebooks (and their py:percent twins) into DIR",
                     description="Editable copies of the walkthrough notebooks; run them with "
                     "`dr-kit notebooks run --notebooks DIR` or open them in JupyterLab.")
    c.add_argument("dir", metavar="DIR", help="target folder (created when missing)")
    c.add_argument("--force", action="store_true", help="overwrite files already there")
    c.set_defaults(func=_copy)


def _run(args: argparse.Namespace) -> int:
    from dr_kit import notebooks

    params = {}
    for name, raw in args.parameter:
        try:
            params[name] = yaml.safe_load(raw)
        except yaml.YAMLError:
            raise InvalidInput(f"parameter {name}: cannot read value {raw!r}") from None
    results = notebooks.run_all(args.out, params, only=args.only, html=not args.no_html,
                                notebooks=args.notebooks, progress=lambda s: print(s, flush=True))
    print()
    for line in notebooks.summary_lines(results):
        print(line)
    print(f"\nexecuted notebooks and HTML in {args.out}/")
    return 0


def _copy(args: argparse.Namespace) -> int:
    from dr_kit import notebooks

    copied = notebooks.copy_notebooks(args.dir, force=args.force)
    print(f"copied {len(copied)} files to {args.dir}/ (run them with: dr-kit notebooks run "
          f"--notebooks {args.dir})")
    return 0
