"""Command-line subcommands of the analyst library, one file each (snapshot, lag, query).

Every command reaches a site through a kubeconfig context: ``--kubeconfig K --context C``
(a real cluster), or ``--dir DIR`` (a lab folder, default ``.dr-lab``), which is short for
``--kubeconfig DIR/kubeconfig --context main|backup``: a lab is reached exactly like a
real cluster.  :func:`site_options` adds the options and :func:`site_from_args` turns
them into a :class:`~dr_kit.sites.Site`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from dr_kit.errors import InvalidInput, NotFound
from dr_kit.sites import ProgressEvent, Site

DEFAULT_DIR = ".dr-lab"  # a lab folder holds kubeconfig, with contexts main and backup


def site_options(p: argparse.ArgumentParser, *, site: str) -> None:
    g = p.add_argument_group("site", f"the {site} site: the lab (--dir) or a real cluster "
                             "(--kubeconfig/--context)")
    g.add_argument("--dir", metavar="DIR", help=f"lab directory (default {DEFAULT_DIR})")
    g.add_argument("--kubeconfig", metavar="K", help="kubeconfig of a real cluster")
    g.add_argument("--context", metavar="C", help=f"kubeconfig context of the {site} site")


def site_from_args(args: argparse.Namespace, site: str) -> Site:
    """The lab's ``site`` (main/backup) or the real cluster named by --kubeconfig/--context."""
    real = bool(args.kubeconfig or args.context)
    if real and args.dir:
        raise InvalidInput("use either --dir (the lab) or --kubeconfig/--context (a real "
                           "cluster), not both")
    if real:
        return Site.from_kubeconfig(args.kubeconfig, args.context, name=site)
    return lab_site(args.dir or DEFAULT_DIR, site)


def lab_site(lab_dir: str | Path, site: str) -> Site:
    """Site ``main`` or ``backup`` of a lab folder, through its kubeconfig."""
    kubeconfig = Path(lab_dir) / "kubeconfig"
    if not kubeconfig.is_file():
        root = Path(lab_dir).resolve()
        raise NotFound(f"no lab in {root}; start one with: dr-kit lab up --dir {root}")
    return Site.from_kubeconfig(kubeconfig, site, name=site)


class CliProgress:
    """Progress of waits on stderr: the task once, a dot per update, ``ok`` at the end."""

    def __init__(self, stream=None) -> None:  # noqa: ANN001
        self.stream = stream or sys.stderr
        self.task: str | None = None

    def __call__(self, e: ProgressEvent) -> None:
        if e.task != self.task:
            if self.task is not None:
                self.stream.write("\n")
            self.stream.write(f"{e.task} ")
            self.task = e.task
        if e.done:
            self.stream.write(f" {e.message} ({e.elapsed_s:.1f} s)\n")
            self.task = None
        else:
            self.stream.write(".")
        self.stream.flush()


__all__ = ["site_options", "site_from_args", "lab_site", "CliProgress", "DEFAULT_DIR"]
