"""Operator commands: ``operator run|manifests``, ``protect``, ``unprotect``, ``protection status``.

The functions are the library surface (the lab and notebooks call them); :func:`add_parser`
registers the commands on the main ``dr-kit`` parser.  Clusters are reached through a
kubeconfig context: ``--kubeconfig K --context C``, or ``--dir DIR`` (default ``.dr-lab``)
for the lab's ``DIR/kubeconfig`` with context ``main``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from kubernetes import client as k8s

from dr_kit.errors import DrKitError, InvalidInput, NotFound, Unavailable
from dr_kit.kube import api_client as kube_api_client
from dr_kit.operator import manifests
from dr_kit.operator.backends import MANAGED_BY_LABEL
from dr_kit.operator.health import DEFAULT_ADDRESS, parse_address
from dr_kit.operator.policy import MANAGED_BY, Policy
from dr_kit.operator.reconcile import (
    BACKEND_ANNOTATION,
    DEGRADED,
    PROTECTED,
    REFUSED,
    SITES,
    STANDBY,
    UNPROTECTED,
    WAITING,
    read_status,
)
from dr_kit.operator.runner import Kube, Runner, permissions
from dr_kit.operator.status import Lag, lag_of

DEFAULT_LAB_DIR = ".dr-lab"
LAB_MAIN_CONTEXT = "main"
OWNED_SELECTOR = f"{MANAGED_BY_LABEL}={MANAGED_BY}"

# -- connecting ---------------------------------------------------------------------------


def api_client(kubeconfig: str | os.PathLike | None = None, context: str | None = None,
               lab_dir: str | os.PathLike | None = DEFAULT_LAB_DIR, *,
               in_cluster: bool = False) -> k8s.ApiClient:
    """An API client for one context (:func:`dr_kit.kube.api_client`).

    Precedence: ``in_cluster``; an explicit ``kubeconfig``; ``lab_dir/kubeconfig`` when it
    exists (context defaults to ``main``); the client's default kubeconfig
    (``$KUBECONFIG`` or ``~/.kube/config``).
    """
    if not in_cluster and not kubeconfig and lab_dir and (Path(lab_dir) / "kubeconfig").is_file():
        kubeconfig = Path(lab_dir) / "kubeconfig"
        context = context or LAB_MAIN_CONTEXT
    hint = f" (no {Path(lab_dir or DEFAULT_LAB_DIR) / 'kubeconfig'} either: pass --kubeconfig, " \
        "or start the lab with `dr-kit lab up`)"
    return kube_api_client(Path(kubeconfig) if kubeconfig else None, context,
                           in_cluster=in_cluster, retries=None, hint=hint)


def _kube(kubeconfig=None, context=None, lab_dir=DEFAULT_LAB_DIR) -> Kube:
    return Kube(api_client(kubeconfig, context, lab_dir))


def _policy(policy: Policy | str | os.PathLike | None) -> Policy:
    if policy is None:
        return Policy()
    if isinstance(policy, Policy):
        return policy
    return Policy.load(Path(policy))


def _namespace(kube: Kube, name: str) -> dict:
    found = kube.items("Namespace", field_selector=f"metadata.name={name}")
    if not found:
        raise NotFound(f"namespace {name} not found on {kube.api.configuration.host}")
    return found[0]


def _status_of(ns: dict, policy: Policy) -> dict | None:
    return read_status(ns["metadata"].get("annotations") or {}, policy)


# -- library functions -----------------------------------------------------------------


def protect(namespace: str, *, kubeconfig=None, context=None, lab_dir=DEFAULT_LAB_DIR,
            policy: Policy | str | None = None, backend: str | None = None,
            wait: float = 0.0) -> dict:
    """Label ``namespace`` for protection; with ``wait`` > 0, wait for the operator's verdict.

    Returns the namespace's protection status; ``{"state": "Requested"}`` when not waiting
    and the namespace was not labelled before (the operator has not answered yet).
    """
    pol = _policy(policy)
    kube = _kube(kubeconfig, context, lab_dir)
    ns = _namespace(kube, namespace)
    patch: dict[str, Any] = {"metadata": {"labels": {pol.label_key: pol.label_value}}}
    if backend:
        if backend not in pol.backends:
            raise InvalidInput(f"backend {backend!r} is not enabled in the operator policy "
                               f"(enabled: {', '.join(pol.backends)})")
        patch["metadata"]["annotations"] = {BACKEND_ANNOTATION: backend}
    was_labelled = (ns["metadata"].get("labels") or {}).get(pol.label_key) == pol.label_value
    kube.patch("Namespace", namespace, patch)
    if wait > 0:
        # a verdict given before this label is not an answer to it
        stale = None if was_labelled else _status_of(ns, pol)
        return _wait(kube, namespace, pol, wait,
                     done=(PROTECTED, REFUSED, WAITING, DEGRADED, STANDBY), stale=stale)
    known = _status_of(ns, pol) if was_labelled else None
    return known or {"state": "Requested"}


def unprotect(namespace: str, *, kubeconfig=None, context=None, lab_dir=DEFAULT_LAB_DIR,
              policy: Policy | str | None = None, wait: float = 0.0) -> dict:
    """Remove the protection label; the operator removes the replication resources."""
    pol = _policy(policy)
    kube = _kube(kubeconfig, context, lab_dir)
    ns = _namespace(kube, namespace)
    kube.patch("Namespace", namespace, {"metadata": {"labels": {pol.label_key: None}}})
    if wait > 0 and _status_of(ns, pol) is not None:
        return _wait(kube, namespace, pol, wait, done=(UNPROTECTED,), stale=None)
    return _status_of(ns, pol) or {"state": UNPROTECTED}


def _group_objects(kube: Kube, namespace: str | None) -> dict[str, list[dict]]:
    """The operator's replication resources (one list per kind), by namespace."""
    out: dict[str, list[dict]] = {}
    for kind in ("VolumeGroupReplication", "Replication"):
        try:
            objs = kube.items(kind, namespace, label_selector=OWNED_SELECTOR)
        except NotFound:  # the cluster does not serve this backend's CRDs
            continue
        for o in objs:
            out.setdefault(o["metadata"].get("namespace", ""), []).append(o)
    return out


def _with_live_lag(status: dict, objects: list[dict], now: datetime) -> dict:
    """``status`` plus the lag read now from the namespace's replication resources."""
    backend = status.get("backend")
    kind = "Replication" if backend == "hitachi" else "VolumeGroupReplication"
    mine = [o for o in objects if o.get("kind") == kind]
    if status.get("state") in (None, UNPROTECTED, WAITING) or not backend:
        lag = Lag(None, f"{kind} status", note="not replicating")
    else:
        lag = lag_of(kind, mine, now)
    out = dict(status)
    out["lag"] = lag.as_dict()
    out["lagText"] = lag.describe()
    times = [str((o.get("status") or {}).get("lastSyncTime") or "") for o in mine]
    out["lastSync"] = min(times) if times and all(times) else None
    out["sinceLastSyncSeconds"] = None
    if out["lastSync"]:
        try:
            t = datetime.fromisoformat(out["lastSync"].replace("Z", "+00:00"))
            out["sinceLastSyncSeconds"] = round((now - t).total_seconds(), 3)
        except ValueError:
            pass
    return out


def protection_status(namespace: str, *, kubeconfig=None, context=None,
                      lab_dir=DEFAULT_LAB_DIR, policy: Policy | str | None = None) -> dict:
    """The operator's status annotation, plus ``labelled`` and the lag read now.

    ``lag`` says where the figure comes from: the plug-in's own time lag when it publishes
    one (exact), else ``now - lastSyncTime`` (an upper bound of the data a disaster would
    lose, at the one-second resolution of a Kubernetes time); ``seconds`` None = unknown,
    never 0.  ``sinceLastSyncSeconds`` is the age of ``lastSync`` (None when unknown).
    """
    pol = _policy(policy)
    kube = _kube(kubeconfig, context, lab_dir)
    ns = _namespace(kube, namespace)
    status = dict(_status_of(ns, pol) or {"state": UNPROTECTED, "message":
                                          "the operator has not handled this namespace"})
    status["namespace"] = namespace
    status["labelled"] = (ns["metadata"].get("labels") or {}).get(pol.label_key) == \
        pol.label_value
    objects = _group_objects(kube, namespace).get(namespace, [])
    return _with_live_lag(status, objects, datetime.now(UTC))


def protection_table(*, kubeconfig=None, context=None, lab_dir=DEFAULT_LAB_DIR,
                     policy: Policy | str | None = None, include_unprotected: bool = False
                     ) -> list[dict]:
    """Every namespace the operator handles, with state, PVCs and lag, in three API calls
    (namespaces, VolumeGroupReplications, Replications) whatever their number."""
    pol = _policy(policy)
    kube = _kube(kubeconfig, context, lab_dir)
    now = datetime.now(UTC)
    namespaces = kube.items("Namespace")
    objects = _group_objects(kube, None)
    return status_rows(namespaces, objects, pol, now, include_unprotected=include_unprotected)


def status_rows(namespaces: list[dict], objects: dict[str, list[dict]], policy: Policy,
                now: datetime, *, include_unprotected: bool = False) -> list[dict]:
    """One row per handled namespace (pure: the table of ``protection status``)."""
    rows = []
    for ns in namespaces:
        md = ns["metadata"]
        labelled = policy.label_key in (md.get("labels") or {})
        status = _status_of(ns, policy)
        if status is None and not labelled:
            continue
        status = dict(status or {"state": "Requested", "message": "labelled; no answer from "
                                 "the operator yet"})
        if status.get("state") == UNPROTECTED and not include_unprotected and not labelled:
            continue
        status["namespace"] = md["name"]
        status["labelled"] = (md.get("labels") or {}).get(policy.label_key) == \
            policy.label_value
        rows.append(_with_live_lag(status, objects.get(md["name"], []), now))
    rows.sort(key=lambda r: r["namespace"])
    return rows


def _wait(kube: Kube, namespace: str, policy: Policy, timeout: float, done: tuple,
          stale: dict | None) -> dict:
    deadline = time.monotonic() + timeout
    status: dict | None = None
    while time.monotonic() < deadline:
        status = _status_of(_namespace(kube, namespace), policy)
        if status and status.get("state") in done and status != stale:
            return status
        time.sleep(0.1)
    if status is None:
        raise DrKitError(f"no status from the operator on {namespace} after {timeout:g} s: is "
                         f"`dr-kit operator run` running against this cluster?")
    return status


def runner_for(kubeconfig=None, context=None, backup_context: str | None = None, *,
               lab_dir=DEFAULT_LAB_DIR, policy: Policy | str | None = None,
               backup_kubeconfig=None, in_cluster: bool = False,
               resync_seconds: float = 300.0, watch_seconds: int = 30, site: str = "main",
               workers: int = 4, serve: str | None = None) -> Runner:
    """A ready-to-start :class:`Runner` (the lab starts one in a thread with this).

    ``serve``: ``HOST:PORT`` for ``/healthz``, ``/readyz`` and ``/metrics`` (loopback only
    unless ``in_cluster``); None or ``off`` serves nothing.
    """
    if site not in SITES:
        raise InvalidInput(f"--site {site!r}: choose one of {', '.join(SITES)}")
    if workers < 1 or workers > 64:
        raise InvalidInput(f"--workers {workers}: choose 1..64")
    if resync_seconds <= 0:
        raise InvalidInput(f"--resync {resync_seconds:g}: must be a positive number of seconds")
    address = parse_address(serve, allow_remote=in_cluster) if serve else None
    pol = _policy(policy)
    perms = permissions(pol)
    if site == "backup":  # it also runs the snapshot schedules there
        from dr_kit.operator.schedule import with_permissions

        perms = with_permissions(perms)
    main = Kube(api_client(kubeconfig, context, lab_dir, in_cluster=in_cluster), perms)
    backup = None
    if backup_context or backup_kubeconfig:
        backup = Kube(api_client(backup_kubeconfig or kubeconfig, backup_context,
                                 lab_dir if not backup_kubeconfig else None),
                      permissions(pol, site="backup"))
    return Runner(main, pol, backup=backup, resync_seconds=resync_seconds,
                  watch_seconds=watch_seconds, site=site, workers=workers, serve=address)


def run(kubeconfig=None, context=None, backup_context: str | None = None, **kw: Any) -> int:
    """Run the operator in the foreground until SIGINT/SIGTERM."""
    runner = runner_for(kubeconfig, context, backup_context, **kw)
    log = logging.getLogger("dr_kit.operator")
    runner.start()
    try:
        missing = runner.missing_crds()
    except Unavailable:
        missing = []  # said by start(); the watches retry
    log.info("operator watching %s as the %s site (backends: %s; %d workers)%s%s",
             runner.kube.api.configuration.host, runner.site,
             ", ".join(runner.policy.backends), runner.workers,
             f"; health and metrics on {runner.health.url}" if runner.health else "",
             f"; missing CRDs: {', '.join(missing)}" if missing else "")
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, lambda *_: runner.stop_event.set())
    try:
        while not runner.stop_event.wait(0.5):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        runner.stop()
    return 0


def render_manifests(policy: Policy | str | None = None, **kw: Any) -> str:
    """The operator's deployment manifests as multi-document YAML."""
    return manifests.render_yaml(_policy(policy), **kw)


# -- argparse -------------------------------------------------------------------------------


def _site_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--kubeconfig", help="kubeconfig file (default: DIR/kubeconfig of the lab)")
    p.add_argument("--context", help="kubeconfig context (lab default: main)")
    p.add_argument("--dir", default=DEFAULT_LAB_DIR, dest="lab_dir",
                   help="lab directory whose kubeconfig to use (default: .dr-lab)")
    p.add_argument("--policy", help="operator policy file (YAML); default: built-in")


def _conn(args: argparse.Namespace) -> dict:
    return {"kubeconfig": args.kubeconfig, "context": args.context, "lab_dir": args.lab_dir,
            "policy": args.policy}


def _guard(fn):
    def wrapped(args: argparse.Namespace) -> int:
        try:
            return fn(args)
        except DrKitError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return exc.exit_code
    wrapped.__name__ = fn.__name__
    return wrapped


def _print_status(status: dict, as_json: bool) -> None:
    if as_json:
        print(json.dumps(status, indent=2, sort_keys=True))
        return
    group = status.get("group") or {}
    line = f"{status.get('namespace', '')}: {status.get('state')}"
    if status.get("message"):
        line += f" - {status['message']}"
    print(line.lstrip(": "))
    if group:
        gid = "" if group.get("id") is None else f" (id {group['id']})"
        print(f"  group:  {group.get('name')}{gid}, backend {status.get('backend')}")
    if status.get("pvcs"):
        print(f"  PVCs:   {', '.join(status['pvcs'])}")
    elif status.get("pvcCount"):
        print(f"  PVCs:   {status['pvcCount']}")
    backup = status.get("backup")
    if isinstance(backup, dict) and "of" in backup:
        waiting = ", ".join(f"{k} {v or '?'}" for k, v in sorted(
            (backup.get("notBound") or {}).items()))
        print(f"  backup: {backup.get('bound')}/{backup.get('of')} PVCs bound"
              + (f" (not yet: {waiting})" if waiting else ""))
    if "lag" in status:
        lag = status["lag"] or {}
        src = f" ({lag.get('source')})" if lag.get("source") else ""
        print(f"  lag:    {status.get('lagText')}{src}")
    if "sinceLastSyncSeconds" in status:
        s = status["sinceLastSyncSeconds"]
        print(f"  last sync: {status.get('lastSync') or 'unknown'}"
              + ("" if s is None else f" ({s:.1f} s ago)"))


def _print_table(rows: list[dict], as_json: bool) -> None:
    if as_json:
        print(json.dumps(rows, indent=2, sort_keys=True))
        return
    if not rows:
        print("no protected namespaces (label one: dr-kit protect NAMESPACE)")
        return
    table = [("NAMESPACE", "STATE", "PVCS", "LAG", "LAG SOURCE", "MESSAGE")]
    for r in rows:
        lag = r.get("lag") or {}
        source = (lag.get("source") or "").replace(" status.", " ")
        count = r.get("pvcCount", len(r.get("pvcs") or []))
        message = str(r.get("message") or "")
        table.append((r["namespace"], str(r.get("state")), str(count), r.get("lagText") or "",
                      source if lag.get("seconds") is not None else "",
                      message if len(message) <= 70 else message[:67] + "..."))
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]) - 1)]
    for row in table:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=False)) + "  " + row[-1])


@_guard
def _cmd_protect(args: argparse.Namespace) -> int:
    status = protect(args.namespace, backend=args.backend, wait=args.wait, **_conn(args))
    status.setdefault("namespace", args.namespace)
    if status.get("state") == "Requested":
        status["message"] = "labelled; the operator creates the consistency group"
    _print_status(status, args.json)
    return 1 if status.get("state") == REFUSED else 0


@_guard
def _cmd_unprotect(args: argparse.Namespace) -> int:
    status = unprotect(args.namespace, wait=args.wait, **_conn(args))
    status.setdefault("namespace", args.namespace)
    _print_status(status, args.json)
    return 0


@_guard
def _cmd_status(args: argparse.Namespace) -> int:
    if args.namespace:
        _print_status(protection_status(args.namespace, **_conn(args)), args.json)
    else:
        _print_table(protection_table(include_unprotected=args.all, **_conn(args)), args.json)
    return 0


@_guard
def _cmd_run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(message)s", stream=sys.stderr)
    return run(args.kubeconfig, args.context, args.backup_context, lab_dir=args.lab_dir,
               policy=args.policy, backup_kubeconfig=args.backup_kubeconfig,
               in_cluster=args.in_cluster, resync_seconds=args.resync, site=args.site,
               workers=args.workers, serve=args.serve)


@_guard
def _cmd_manifests(args: argparse.Namespace) -> int:
    sys.stdout.write(render_manifests(args.policy, namespace=args.namespace, image=args.image,
                                      backup_secret=args.backup_secret, site=args.site,
                                      health_port=args.health_port))
    return 0


def add_operator_commands(op_sub: argparse._SubParsersAction) -> None:
    """Register ``run`` and ``manifests`` (under ``dr-kit operator``, or alone for
    ``python -m dr_kit.operator``)."""
    p = op_sub.add_parser("run", help="run the operator against a cluster (foreground)")
    _site_args(p)
    p.add_argument("--backup-context", help="context of the backup site (observe backup PVCs)")
    p.add_argument("--backup-kubeconfig", help="kubeconfig for the backup site, if separate")
    p.add_argument("--in-cluster", action="store_true",
                   help="use the pod's service account (inside the Deployment)")
    p.add_argument("--resync", type=float, default=300.0,
                   help="seconds between full resyncs (changes arrive by watch; default 300)")
    p.add_argument("--site", default="main", choices=SITES,
                   help="the site this operator runs at (a namespace whose DR state names the "
                        "other site as primary is left alone here)")
    p.add_argument("--workers", type=int, default=4,
                   help="reconcile threads, whatever the number of namespaces (default 4)")
    p.add_argument("--serve", default=DEFAULT_ADDRESS, metavar="HOST:PORT",
                   help=f"serve /healthz, /readyz and /metrics (default {DEFAULT_ADDRESS}; "
                        f"port 0 picks a free one; 'off' serves nothing)")
    p.add_argument("-v", "--verbose", action="store_true")
    p.set_defaults(func=_cmd_run)

    p = op_sub.add_parser("manifests", help="print Deployment, ServiceAccount, RBAC (YAML)")
    p.add_argument("--policy", help="operator policy file (YAML); default: built-in")
    p.add_argument("--namespace", default=manifests.DEFAULT_NAMESPACE)
    p.add_argument("--image", default=manifests.DEFAULT_IMAGE)
    p.add_argument("--backup-secret", help="Secret holding a kubeconfig for the backup site")
    p.add_argument("--site", choices=("main", "backup"), default="main",
                   help="backup: the backup site's operator (--site backup, with the snapshot "
                        "schedules' permissions) and the identity the main site's operator "
                        "reads it with (dr-kit-operator-peer)")
    p.add_argument("--health-port", type=int, default=manifests.DEFAULT_HEALTH_PORT,
                   help="container port of /healthz, /readyz and /metrics (default "
                        f"{manifests.DEFAULT_HEALTH_PORT})")
    p.set_defaults(func=_cmd_manifests)


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register ``operator run|manifests``, ``protect``, ``unprotect``, ``protection status``."""
    op = subparsers.add_parser("operator", help="the namespace operator")
    add_operator_commands(op.add_subparsers(dest="operator_command", required=True))

    p = subparsers.add_parser("protect", help="label a namespace for consistent copy")
    p.add_argument("namespace")
    _site_args(p)
    p.add_argument("--backend", help="backend for this namespace (csi-addons, hitachi)")
    p.add_argument("--wait", type=float, default=0.0, metavar="SECONDS",
                   help="wait up to SECONDS for the operator's verdict")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_cmd_protect)

    p = subparsers.add_parser("unprotect", help="remove a namespace's protection label")
    p.add_argument("namespace")
    _site_args(p)
    p.add_argument("--wait", type=float, default=0.0, metavar="SECONDS")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_cmd_unprotect)

    p = subparsers.add_parser("protection", help="protection of a namespace")
    prot_sub = p.add_subparsers(dest="protection_command", required=True)
    s = prot_sub.add_parser("status", help="the operator's status for a namespace, or a "
                            "table of every protected namespace (state, PVCs, lag)")
    s.add_argument("namespace", nargs="?", help="one namespace (default: all of them)")
    _site_args(s)
    s.add_argument("--all", action="store_true",
                   help="the table lists unprotected namespaces the operator handled too")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=_cmd_status)


__all__ = ["add_operator_commands", "add_parser", "api_client", "protect", "protection_status", "protection_table",
           "render_manifests", "run", "runner_for", "status_rows", "unprotect"]
