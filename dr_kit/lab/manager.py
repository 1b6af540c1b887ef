"""Starting, checking and stopping the lab: two sites and their processes on this machine.

    up(dir=None, *, rate=None, timeout=60, progress=None) -> dict
    ensure_up(dir=None) -> dict            # what notebooks call: start only when not running
    status(dir=None) -> dict
    down(dir=None, *, purge=False, progress=None) -> dict
    set_workload(dir, rate) -> dict
    set_link(dir, delay_ms=None, rate_mbit=None, cut=None) -> dict
    kill(dir, name) -> int                 # SIGKILL one process (fault drills); up restarts it

Processes, in start order (stopped in reverse)::

    main-array  backup-array  link  main-api  backup-api       (no dependencies)
    main-controllers  backup-controllers                        (need lab.json, kubeconfig)
    shop  operator  backup-operator                             (need the bound shop PVCs)

The backup site runs an operator of its own (``--site backup``): it takes the scheduled
snapshot groups there (:mod:`dr_kit.operator.schedule`).

Ports are chosen once, on the first ``up``, and kept in ``lab.json``: the kubeconfig, the
replication addresses and the objects that name them stay valid across restarts.  The
sites' tokens live only in the kubeconfig (0600) and reach the API servers through their
environment.  Every Kubernetes call goes through a kubeconfig context with the official
client.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import math
import os
import secrets
import shutil
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

from dr_kit import published
from dr_kit.errors import Conflict, DrKitError, InvalidInput, NotFound, Unavailable
from dr_kit.kube import Kube, api_client
from dr_kit.lab import processes
from dr_kit.lab.layout import (
    ARRAY_SECRET,
    CSI_DRIVER,
    PLUGIN_NAMESPACE,
    SHOP_NAMESPACE,
    SHOP_PVC_SIZE,
    SHOP_PVCS,
    SITES,
    SNAPSHOT_CLASS,
    STORAGE_CLASS,
    VOLUME_SNAPSHOT_CLASS,
    LabDir,
)

Progress = Callable[[str], None]

STATE_VERSION = 1
DEFAULT_RATE = 5.0  # shop transactions per second on the first up
PORT_NAMES = ("main_api", "backup_api", "main_mgmt", "backup_mgmt", "main_repl", "backup_repl",
              "link", "link_control")
START_ORDER = ("main-array", "backup-array", "link", "main-api", "backup-api",
               "main-controllers", "backup-controllers", "shop", "operator", "backup-operator")
LABELS = {"main-array": "main array", "backup-array": "backup array", "link": "replication link",
          "main-api": "main API server", "backup-api": "backup API server",
          "main-controllers": "main controllers", "backup-controllers": "backup controllers",
          "shop": "shop application", "operator": "operator",
          "backup-operator": "backup site's operator"}
# down stops these groups one after the other (each group at once), users first
STOP_TIERS = (("shop", "operator", "backup-operator"), ("main-controllers", "backup-controllers"),
              ("link", "main-api", "backup-api"), ("main-array", "backup-array"))
# seconds a process gets between SIGTERM and SIGKILL (the operator holds no state of its own)
STOP_GRACE = {"operator": 3.0, "backup-operator": 3.0}
TOKEN_ENV = "DR_KIT_APISERVER_TOKEN"
# the storage processes' API tokens: kept in tokens/<name>.token (0600), given by environment
STORAGE_TOKEN_ENV = {"main-array": "DR_KIT_ARRAY_TOKEN", "backup-array": "DR_KIT_ARRAY_TOKEN",
                     "link": "DR_KIT_LINK_TOKEN"}
SHOP_DEPLOYMENT = "shop"
QUERY_TIMEOUT = 3.0  # seconds for each status query; a dead site must not hang `status`


# -- small helpers ------------------------------------------------------------------------


def _quiet(_line: str) -> None:
    pass


@contextlib.contextmanager
def _locked(lab: LabDir) -> Iterator[None]:
    """One manager at a time per lab directory (two `up`s must not start two labs)."""
    lab.root.mkdir(mode=0o700, parents=True, exist_ok=True)  # a new folder is ours alone
    lab.run.mkdir(exist_ok=True)
    fd = os.open(lab.run / "lab.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _free_ports(n: int) -> list[int]:
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
    os.replace(tmp, path)


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


MAX_RATE = 10_000.0  # transactions/s: ten times what one shop process can run on a laptop


def check_rate(rate: Any) -> float:
    """A shop rate in transactions per second: a finite number from 0 (pauses the shop) to
    :data:`MAX_RATE`."""
    try:
        r = float(rate)
    except (TypeError, ValueError):
        raise InvalidInput(f"the shop rate must be a number of transactions per second, "
                           f"got {rate!r}") from None
    if not math.isfinite(r):
        raise InvalidInput(f"the shop rate must be a finite number of transactions per second "
                           f"(at most {MAX_RATE:,.0f}), got {rate}")
    if r < 0:
        raise InvalidInput(f"the shop rate must be >= 0 transactions per second (0 pauses), got {rate}")
    if r > MAX_RATE:
        raise InvalidInput(f"the shop rate must be at most {MAX_RATE:,.0f} transactions per "
                           f"second (one shop process runs about 1,000), got {rate}")
    return r


def _check_number(value: Any, what: str, lo: float, hi: float) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise InvalidInput(f"{what} must be a number, got {value!r}") from None
    if not math.isfinite(v) or not lo <= v <= hi:
        raise InvalidInput(f"{what} must be between {lo:g} and {hi:g}, got {value}")
    return v


# -- state ------------------------------------------------------------------------------------


def _array_socket(lab: LabDir, site: str) -> str:
    from dr_kit.storage.server import socket_path_for

    return str(socket_path_for(lab.array_dir(site)))


def _new_state(lab: LabDir) -> dict[str, Any]:
    ports = dict(zip(PORT_NAMES, _free_ports(len(PORT_NAMES)), strict=True))
    return {"version": STATE_VERSION, "ports": ports, "endpoints": _endpoints(lab, ports),
            "processes": {}, "seeded": False, "link_settings": {"delay_ms": 0.0, "rate_mbit": 0.0}}


def _endpoints(lab: LabDir, ports: dict[str, int]) -> dict[str, Any]:
    ep: dict[str, Any] = {}
    for site in SITES:
        ep[site] = {"api": f"https://127.0.0.1:{ports[f'{site}_api']}",
                    "array": {"mgmt_url": f"http://127.0.0.1:{ports[f'{site}_mgmt']}",
                              "data_socket": _array_socket(lab, site),
                              "replication": f"127.0.0.1:{ports[f'{site}_repl']}"}}
    ep["link"] = {"listen": f"127.0.0.1:{ports['link']}",
                  "control_url": f"http://127.0.0.1:{ports['link_control']}",
                  "target": f"127.0.0.1:{ports['backup_repl']}"}
    return ep


def _tokens(lab: LabDir) -> dict[str, str] | None:
    """The sites' tokens as kept in the kubeconfig, or None when there is none to reuse."""
    try:
        doc = yaml.safe_load(lab.kubeconfig.read_text())
        users = {u["name"]: u["user"]["token"] for u in doc["users"]}
        return {site: str(users[site]) for site in SITES}
    except (OSError, yaml.YAMLError, KeyError, TypeError):
        return None


def _storage_tokens(lab: LabDir) -> tuple[dict[str, str], list[str]]:
    """The arrays' and the link's tokens (created when missing); returns them and the new ones."""
    lab.tokens.mkdir(mode=0o700, exist_ok=True)
    os.chmod(lab.tokens, 0o700)
    out, new = {}, []
    for name in STORAGE_TOKEN_ENV:
        token = lab.token(name)
        if token is None:
            token = secrets.token_urlsafe(32)
            path = lab.token_file(name)
            tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(token)
            os.replace(tmp, path)
            new.append(name)
        out[name] = token
    return out, new


def _write_kubeconfig(lab: LabDir, state: dict[str, Any], tokens: dict[str, str]) -> None:
    from dr_kit.lab.apiserver import write_kubeconfig
    from dr_kit.lab.apiserver.tls import cert_path

    # each site's CA named by its file (kept across restarts), not embedded
    sites = {site: (state["endpoints"][site]["api"], tokens[site], cert_path(lab.api_dir(site)))
             for site in SITES}
    write_kubeconfig(lab.kubeconfig, sites, current="main")


# -- process commands --------------------------------------------------------------------------


def _command(lab: LabDir, name: str, state: dict[str, Any]) -> list[str]:
    ports, py = state["ports"], processes.python_cmd
    site = name.split("-", 1)[0]
    if name.endswith("-array"):
        return py("dr_kit.storage.server", "--dir", str(lab.array_dir(site)), "--name", site,
                  "--mgmt-port", str(ports[f"{site}_mgmt"]), "--repl-port", str(ports[f"{site}_repl"]),
                  "--ready-file", str(lab.ready_file(name)))
    if name == "link":
        ls = state.get("link_settings") or {}
        return py("dr_kit.storage.link", "--target", f"127.0.0.1:{ports['backup_repl']}",
                  "--port", str(ports["link"]), "--control-port", str(ports["link_control"]),
                  "--delay-ms", str(float(ls.get("delay_ms") or 0.0)),
                  "--rate-mbit", str(float(ls.get("rate_mbit") or 0.0)),
                  "--ready-file", str(lab.ready_file(name)))
    if name.endswith("-api"):
        return py("dr_kit.lab.apiserver", "--state-dir", str(lab.api_dir(site)),
                  "--port", str(ports[f"{site}_api"]), "--ready-file", str(lab.ready_file(name)))
    if name.endswith("-controllers"):
        return py("dr_kit.lab.controllers", "--dir", str(lab.root), "--site", site,
                  "--ready-file", str(lab.ready_file(name)))
    if name == "shop":
        return py("dr_kit.lab.shopapp", "--dir", str(lab.root), "--ready-file", str(lab.ready_file(name)),
                  "--site", app_site(state, SHOP_NAMESPACE) or "main")
    if name == "operator":
        return py("dr_kit.operator", "run", "--kubeconfig", str(lab.kubeconfig),
                  "--dir", str(lab.root), "--context", "main", "--backup-context", "backup",
                  "--serve", "127.0.0.1:0")  # a free port each time: labs run side by side
    if name == "backup-operator":  # protection runs from whichever site is primary
        return py("dr_kit.operator", "run", "--kubeconfig", str(lab.kubeconfig),
                  "--dir", str(lab.root), "--context", "backup", "--backup-context", "main",
                  "--site", "backup", "--workers", "1", "--serve", "127.0.0.1:0")
    raise ValueError(name)


def _spawn(lab: LabDir, name: str, state: dict[str, Any], tokens: dict[str, str]) -> processes.Started:
    extra = {TOKEN_ENV: tokens[name.split("-", 1)[0]]} if name.endswith("-api") else {}
    if name in STORAGE_TOKEN_ENV:
        extra = {STORAGE_TOKEN_ENV[name]: tokens[name]}
    operator = name in ("operator", "backup-operator")
    ready_file = None if operator else lab.ready_file(name)
    p = processes.spawn(name, _command(lab, name, state), log=lab.log_file(name),
                        env=processes.base_env(extra), ready_file=ready_file,
                        ready_pattern="operator watching" if operator else None,
                        cwd=lab.root)
    if name in STOP_GRACE:
        p.record["stop_grace"] = STOP_GRACE[name]
    if name == "shop":
        p.record["site"], p.record["namespace"] = app_site(state, SHOP_NAMESPACE) or "main", SHOP_NAMESPACE
    state["processes"][name] = p.record
    lab.save(state)  # recorded before waiting: an interrupted up leaves nothing untracked
    return p


def _start_all(lab: LabDir, names: list[str], state: dict[str, Any], tokens: dict[str, str],
               deadline: float, progress: Progress) -> dict[str, str]:
    """Start ``names`` together, wait for each; return their ready-file texts."""
    started = [_spawn(lab, n, state, tokens) for n in names]
    ready: dict[str, str] = {}
    for p in started:
        ready[p.name] = processes.wait_ready(p, deadline)
        progress(f"starting {LABELS[p.name]} ... ok ({time.monotonic() - p.t0:.1f} s)")
    return ready


# -- Kubernetes -----------------------------------------------------------------------------------


def _kube(lab: LabDir, site: str, timeout: float = 10.0) -> Kube:
    try:
        api = api_client(lab.kubeconfig, site)
    except InvalidInput as e:
        raise Unavailable(str(e)) from None
    return Kube(api, timeout=timeout, where=f"the lab's {site} API server")


def _create(kube: Kube, kind: str, body: dict[str, Any]) -> bool:
    """Create a seed object; False when it already exists."""
    try:
        kube.create(kind, body)
        return True
    except Conflict:
        return False
    except DrKitError as e:
        raise Unavailable(f"could not create a seed object: {e}") from None


def _shop_deployment() -> dict[str, Any]:
    labels = {"app": "shop", "app.kubernetes.io/part-of": "dr-kit-lab"}
    return {
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": SHOP_DEPLOYMENT, "namespace": SHOP_NAMESPACE, "labels": labels},
        "spec": {
            "replicas": 1, "selector": {"matchLabels": {"app": "shop"}},
            "template": {
                "metadata": {"labels": labels},
                "spec": {"containers": [{
                    "name": "shop", "image": "dr-kit/shopapp:lab",
                    "command": ["python", "-m", "dr_kit.lab.shopapp"],
                    "volumeMounts": [{"name": pvc, "mountPath": f"/data/{pvc}"} for pvc in SHOP_PVCS]}],
                    "volumes": [{"name": pvc, "persistentVolumeClaim": {"claimName": pvc}}
                                for pvc in SHOP_PVCS]}}}}


def _seed(lab: LabDir) -> list[str]:
    """Create the lab's standing objects (idempotent); returns what was created."""
    created: list[str] = []
    for site in SITES:
        kube = _kube(lab, site)
        sc = {"apiVersion": "storage.k8s.io/v1", "kind": "StorageClass",
              "metadata": {"name": STORAGE_CLASS}, "provisioner": CSI_DRIVER,
              "reclaimPolicy": "Delete", "volumeBindingMode": "Immediate",
              # the plug-in's Secret with the array's endpoint (dr_kit.published)
              "parameters": {published.SECRET_NAME_PARAM: ARRAY_SECRET,
                             published.SECRET_NAMESPACE_PARAM: PLUGIN_NAMESPACE}}
        if _create(kube, "StorageClass", sc):
            created.append(f"{site}: storageclass/{STORAGE_CLASS}")
        # both sites: after a role swap the main site holds the secondary copies
        vgsc = {"apiVersion": "groupsnapshot.storage.k8s.io/v1beta2",
                "kind": "VolumeGroupSnapshotClass",
                "metadata": {"name": SNAPSHOT_CLASS, "annotations": {
                    "groupsnapshot.storage.kubernetes.io/is-default-class": "true"}},
                "driver": CSI_DRIVER, "deletionPolicy": "Delete"}
        if _create(kube, "VolumeGroupSnapshotClass", vgsc):
            created.append(f"{site}: volumegroupsnapshotclass/{SNAPSHOT_CLASS}")
        vsc = {"apiVersion": "snapshot.storage.k8s.io/v1", "kind": "VolumeSnapshotClass",
               "metadata": {"name": VOLUME_SNAPSHOT_CLASS}, "driver": CSI_DRIVER,
               "deletionPolicy": "Delete"}
        if _create(kube, "VolumeSnapshotClass", vsc):
            created.append(f"{site}: volumesnapshotclass/{VOLUME_SNAPSHOT_CLASS}")
    kube = _kube(lab, "main")
    ns = {"apiVersion": "v1", "kind": "Namespace",
          "metadata": {"name": SHOP_NAMESPACE, "labels": {"app.kubernetes.io/part-of": "dr-kit-lab"}}}
    if _create(kube, "Namespace", ns):
        created.append(f"main: namespace/{SHOP_NAMESPACE}")
    for pvc in SHOP_PVCS:
        body = {"apiVersion": "v1", "kind": "PersistentVolumeClaim",
                "metadata": {"name": pvc, "namespace": SHOP_NAMESPACE, "labels": {"app": "shop"}},
                "spec": {"storageClassName": STORAGE_CLASS, "accessModes": ["ReadWriteOnce"],
                         "resources": {"requests": {"storage": SHOP_PVC_SIZE}}}}
        if _create(kube, "PersistentVolumeClaim", body):
            created.append(f"main: persistentvolumeclaim/{pvc}")
    if _create(kube, "Deployment", _shop_deployment()):
        created.append(f"main: deployment/{SHOP_DEPLOYMENT}")
    return created


def _wait_bound(lab: LabDir, deadline: float) -> None:
    kube = _kube(lab, "main", timeout=5.0)
    pending = set(SHOP_PVCS)
    while pending:
        for pvc in sorted(pending):
            obj = kube.get("PersistentVolumeClaim", pvc, SHOP_NAMESPACE)
            if obj is None:  # deleted by a user after seeding: nothing to wait for
                pending.discard(pvc)
                continue
            if (obj.get("status") or {}).get("phase") == "Bound":
                pending.discard(pvc)
        if not pending:
            return
        if time.monotonic() > deadline:
            raise Unavailable(f"PVCs {', '.join(sorted(pending))} in namespace {SHOP_NAMESPACE} are "
                              f"not Bound in time; see {lab.log_file('main-controllers')}")
        time.sleep(0.1)


def _mark_shop(lab: LabDir, running: bool, pid: int | None = None) -> None:
    """Give the shop Deployment a truthful status (best effort: the API may be down)."""
    try:
        kube = _kube(lab, "main", timeout=5.0)
        dep = kube.get("Deployment", SHOP_DEPLOYMENT, SHOP_NAMESPACE)
        if dep is None:
            return
        now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        n = 1 if running else 0
        message = (f"the shop application runs as process {pid}" if running
                   else "the shop application is stopped")
        status = {"observedGeneration": dep["metadata"].get("generation") or 1, "replicas": n,
                  "updatedReplicas": n, "readyReplicas": n, "availableReplicas": n,
                  "unavailableReplicas": 1 - n,
                  "conditions": [{"type": "Available", "status": "True" if running else "False",
                                  "reason": "ShopRunning" if running else "ShopStopped",
                                  "message": message, "lastUpdateTime": now,
                                  "lastTransitionTime": now}]}
        kube.patch("Deployment", SHOP_DEPLOYMENT, {"status": status}, SHOP_NAMESPACE, status=True)
    except Exception:  # noqa: BLE001 - best effort: the site may be down
        pass


# -- the application's site, DR state and disasters ------------------------------------------


def app_site(state: dict[str, Any], namespace: str) -> str | None:
    """The site the lab runs ``namespace``'s application at (None: not decided)."""
    return (state.get("app_sites") or {}).get(namespace)


def app_name(namespace: str) -> str:
    """The lab's process name of a namespace's application."""
    return "shop" if namespace == SHOP_NAMESPACE else f"app-{namespace}"


def _app_files(lab: LabDir, namespace: str) -> tuple[Path, Path]:
    """(status file, control file) of a namespace's application."""
    if namespace == SHOP_NAMESPACE:
        return lab.shop_status, lab.shop_control
    name = app_name(namespace)
    return lab.root / f"{name}-status.json", lab.root / f"{name}.json"


def _dr_state(lab: LabDir, namespace: str = SHOP_NAMESPACE) -> Any:
    """The namespace's DR state as the reachable sites record it (None: none readable)."""
    from dr_kit.dr import state as dr_state

    found = []
    for site in SITES:
        try:
            ns = _kube(lab, site, timeout=QUERY_TIMEOUT).get("Namespace", namespace)
            found.append(dr_state.of_namespace(ns))
        except DrKitError:
            continue
    return dr_state.merge(found) if any(found) else None


def _shop_site(lab: LabDir, state: dict[str, Any]) -> tuple[str | None, str]:
    """Where the shop should run (None: nowhere now) and why."""
    st = _dr_state(lab)
    if st is None:
        return "main", ""
    if st.busy:
        return None, f"DR operation {st.operation.name} of namespace {SHOP_NAMESPACE} is running"
    return st.primary, f"the {st.primary} site is primary (DR state)"


def _site_of(name: str, record: dict[str, Any]) -> str | None:
    if record.get("site"):
        return str(record["site"])
    if name == "operator":
        return "main"
    if name == "backup-operator":
        return "backup"
    head = name.split("-", 1)[0]
    return head if head in SITES else None


def crash(dir: str | os.PathLike[str] | None, site: str) -> dict[str, Any]:  # noqa: A002
    """The disaster: SIGKILL every process of one site (its API server, array, storage
    plug-ins, operator and the applications running there).  ``lab up`` brings it back."""
    if site not in SITES:
        raise InvalidInput(f"a lab site is 'main' or 'backup', not {site!r}")
    lab = LabDir.of(dir)
    lab.load()
    with _locked(lab):
        state = lab.load()
        recs = state.get("processes") or {}
        names = [n for n, r in recs.items() if _site_of(n, r) == site and processes.alive(r)]
        at = time.time()
        for n in names:
            processes.kill(recs[n])
        left = [n for n in names if processes.alive(recs[n])]
        if left:
            raise Unavailable(f"still running after SIGKILL: {', '.join(left)}")
    return {"site": site, "killed": names, "at": at}


def start_app(dir: str | os.PathLike[str] | None, site: str, namespace: str = SHOP_NAMESPACE,  # noqa: A002
              *, rate: float | None = None, verify: bool = False, timeout: float = 60.0) -> dict[str, Any]:
    """Start ``namespace``'s application at ``site`` (on that site's PVCs of the namespace);
    a no-op when it runs there already.  Refused while it runs at the other site."""
    if site not in SITES:
        raise InvalidInput(f"a lab site is 'main' or 'backup', not {site!r}")
    lab = LabDir.of(dir)
    lab.load()
    name = app_name(namespace)
    status_file, control_file = _app_files(lab, namespace)
    with _locked(lab):
        state = lab.load()
        rec = (state.get("processes") or {}).get(name)
        if rec and processes.alive(rec):
            if rec.get("site", "main") != site:
                raise Conflict(f"the application of namespace {namespace} runs at the "
                               f"{rec.get('site', 'main')} site (pid {rec['pid']}); stop it first")
            return {"name": name, "site": site, "pid": rec["pid"], "started": False,
                    **(_read_json(status_file) or {})}
        control = _read_json(control_file) or {"rate": DEFAULT_RATE}
        if rate is not None:
            control["rate"] = check_rate(rate)
        _write_json(control_file, control)
        status_file.unlink(missing_ok=True)
        state.setdefault("app_sites", {})[namespace] = site
        cmd = processes.python_cmd("dr_kit.lab.shopapp", "--dir", str(lab.root), "--site", site,
                                   "--namespace", namespace, "--status", str(status_file),
                                   "--control", str(control_file), "--ready-file", str(lab.ready_file(name)),
                                   *(["--verify"] if verify else []))
        p = processes.spawn(name, cmd, log=lab.log_file(name), env=processes.base_env({}),
                            ready_file=lab.ready_file(name), cwd=lab.root)
        p.record.update(site=site, namespace=namespace)
        state["processes"][name] = p.record
        lab.save(state)
        ready = json.loads(processes.wait_ready(p, time.monotonic() + timeout))
    return {"name": name, "site": site, "pid": p.pid, "started": True, **ready}


def stop_app(dir: str | os.PathLike[str] | None, namespace: str = SHOP_NAMESPACE) -> dict[str, Any]:  # noqa: A002
    """Stop ``namespace``'s application (SIGTERM: it commits nothing more and reports its
    last order); returns its last report.  A no-op when it is not running."""
    lab = LabDir.of(dir)
    lab.load()
    name = app_name(namespace)
    status_file, _ = _app_files(lab, namespace)
    with _locked(lab):
        state = lab.load()
        rec = (state.get("processes") or {}).get(name)
        stopped = processes.stop([rec]) if rec else []
        if stopped and rec and namespace == SHOP_NAMESPACE and rec.get("site", "main") == "main":
            _mark_shop(lab, False)
    return {"name": name, "stopped": bool(stopped), **(_read_json(status_file) or {})}


def app_status(dir: str | os.PathLike[str] | None, namespace: str = SHOP_NAMESPACE) -> dict[str, Any] | None:  # noqa: A002
    """What ``namespace``'s application last reported, with ``running`` and ``site`` (None
    when it never ran)."""
    lab = LabDir.of(dir)
    state = lab.load()
    rec = (state.get("processes") or {}).get(app_name(namespace))
    status_file, _ = _app_files(lab, namespace)
    report = _read_json(status_file)
    if rec is None and report is None:
        return None
    return {**(report or {}), "running": processes.alive(rec),
            "site": (rec or {}).get("site") or (report or {}).get("site")}


# -- up / down --------------------------------------------------------------------------------------


def _preload() -> None:
    """Import what ``up`` needs later while the first processes start (it saves ~1 s)."""
    with contextlib.suppress(Exception):
        import kubernetes.client  # noqa: F401
        import kubernetes.config  # noqa: F401

        import dr_kit.lab.apiserver  # noqa: F401


def _alive_names(state: dict[str, Any]) -> set[str]:
    recs = state.get("processes") or {}
    return {n for n in START_ORDER if processes.alive(recs.get(n))}


def up(dir: str | os.PathLike[str] | None = None, *, rate: float | None = None,  # noqa: A002
       timeout: float = 60.0, progress: Progress | None = None) -> dict[str, Any]:
    """Start the lab in ``dir`` (default ``.dr-lab``) and return when both sites are ready.

    Idempotent: on a running lab it changes nothing; after a crash it restarts only the dead
    processes.  ``rate`` sets the shop's transactions per second (default 5 on the first
    up; later ups keep the current rate unless given).
    """
    say = progress or _quiet
    lab = LabDir.of(dir)
    if rate is not None:
        rate = check_rate(rate)
    t0 = time.monotonic()
    deadline = t0 + timeout
    threading.Thread(target=_preload, daemon=True, name="lab-preload").start()
    with _locked(lab):
        first = not lab.exists()
        state = _new_state(lab) if first else lab.load()
        state.setdefault("processes", {})
        state.setdefault("link_settings", {"delay_ms": 0.0, "rate_mbit": 0.0})
        alive = _alive_names(state)
        if alive == set(START_ORDER) and state.get("seeded"):
            if rate is not None:
                set_workload(lab.root, rate)
            say(f"lab in {lab.root} is running ({len(alive)} processes); nothing to start")
            return _summary(lab, state, started=[], seconds=time.monotonic() - t0, running=True)
        for n in alive:
            say(f"{LABELS[n]} is running (pid {state['processes'][n]['pid']})")
        if lab.root.stat().st_mode & 0o077:  # a folder made before: it is the lab's alone now
            os.chmod(lab.root, 0o700)
        for d in (lab.logs, lab.run, *(lab.api_dir(s) for s in SITES), *(lab.array_dir(s) for s in SITES)):
            d.mkdir(parents=True, exist_ok=True)
        lab.save(state)
        storage_tokens, new_tokens = _storage_tokens(lab)
        if new_tokens and alive:  # processes started without these tokens: start them again
            processes.stop([state["processes"][n] for n in START_ORDER if n in alive])
            say(f"restarting {len(alive)} processes to give the storage APIs their tokens")
            alive = set()

        tokens = _tokens(lab)
        if tokens is None:  # no kubeconfig: new tokens, so running API servers must restart
            tokens = {site: secrets.token_urlsafe(32) for site in SITES}
            stale = [state["processes"][n] for n in ("main-api", "backup-api") if n in alive]
            processes.stop(stale)
            alive -= {"main-api", "backup-api"}
        tokens = {**tokens, **storage_tokens}
        started: list[str] = []

        def todo(*names: str) -> list[str]:
            return [n for n in names if n not in alive]

        # 1: arrays, link, API servers (ports are known, so all at once)
        names = todo("main-array", "backup-array", "link", "main-api", "backup-api")
        ready = _start_all(lab, names, state, tokens, deadline, say)
        started += names
        for site in SITES:
            info = _read_json(lab.ready_file(f"{site}-array")) if f"{site}-array" in ready else None
            if info:
                state["endpoints"][site]["array"] = {k: info[k] for k in
                                                     ("mgmt_url", "data_socket", "replication")}
        lab.save(state)
        _write_kubeconfig(lab, state, tokens)

        # 2: controllers, while the standing objects are created
        ctl = [_spawn(lab, n, state, tokens) for n in todo("main-controllers", "backup-controllers")]
        if not state.get("seeded"):
            t = time.monotonic()
            created = _seed(lab)
            say(f"creating {len(created)} objects (storage classes, namespace {SHOP_NAMESPACE}, "
                f"PVCs, deployment) ... ok ({time.monotonic() - t:.1f} s)")
        for p in ctl:
            processes.wait_ready(p, deadline)
            say(f"starting {LABELS[p.name]} ... ok ({time.monotonic() - p.t0:.1f} s)")
            started.append(p.name)
        t = time.monotonic()
        _wait_bound(lab, deadline)
        say(f"PVCs {', '.join(SHOP_PVCS)} bound ({time.monotonic() - t:.1f} s)")

        # 3: the shop and the operators.  A shop that outlived its array reconnects to it by
        # itself (dr_kit.lab.shopapp), as the plug-ins and the operators reconnect to an API
        # server that came back: only dead processes are started.  The shop runs at the
        # site the namespace's DR state names primary, and not while a DR operation runs
        # (the operation starts it where it belongs; a running one is left alone).
        shop_site, why = _shop_site(lab, state)
        shop_rec = state["processes"].get("shop") or {}
        if "shop" in alive and shop_site not in (None, shop_rec.get("site", "main")):
            processes.stop([state["processes"]["shop"]])
            alive.discard("shop")
            say(f"stopped shop application ({why})")
        control = _read_json(lab.shop_control)
        if control is None or rate is not None:
            control = {**(control or {}), "rate": DEFAULT_RATE if rate is None else rate}
            _write_json(lab.shop_control, control)
        if shop_site is None:
            alive.add("shop")  # not started: say why
            say(f"shop application not started: {why}")
        else:
            state.setdefault("app_sites", {})[SHOP_NAMESPACE] = shop_site
        names = todo("shop", "operator", "backup-operator")
        _start_all(lab, names, state, tokens, deadline, say)
        started += names
        if ("shop" in names or not state.get("seeded")) and shop_site == "main":
            _mark_shop(lab, True, state["processes"]["shop"]["pid"])
        state["seeded"] = True
        lab.save(state)
        seconds = time.monotonic() - t0
        say(f"lab up in {seconds:.1f} s: kubeconfig {lab.kubeconfig} (contexts main, backup)")
        return _summary(lab, state, started=started, seconds=seconds, running=False)


def _summary(lab: LabDir, state: dict[str, Any], *, started: list[str], seconds: float,
             running: bool) -> dict[str, Any]:
    return {"dir": str(lab.root), "kubeconfig": str(lab.kubeconfig), "already_running": running,
            "started": started, "seconds": round(seconds, 2), "endpoints": state["endpoints"],
            "processes": {n: r["pid"] for n, r in state["processes"].items()}}


def ensure_up(dir: str | os.PathLike[str] | None = None, *, timeout: float = 60.0,  # noqa: A002
              progress: Progress | None = None) -> dict[str, Any]:
    """Start the lab when it is not running (what notebooks call first); a no-op otherwise."""
    lab = LabDir.of(dir)
    if lab.exists():
        state = lab.load()
        if state.get("seeded") and _alive_names(state) == set(START_ORDER):
            return _summary(lab, state, started=[], seconds=0.0, running=True)
    return up(lab.root, timeout=timeout, progress=progress)


def down(dir: str | os.PathLike[str] | None = None, *, purge: bool = False,  # noqa: A002
         progress: Progress | None = None) -> dict[str, Any]:
    """Stop every process of the lab (verified by pid); keep its state unless ``purge``."""
    say = progress or _quiet
    lab = LabDir.of(dir)
    if not lab.exists():
        raise NotFound(f"no lab in {lab.root} (no {lab.state_file.name}); nothing to stop")
    with _locked(lab):
        state = lab.load()
        recs = state.get("processes") or {}
        order = [n for n in START_ORDER if n in recs] + [n for n in recs if n not in START_ORDER]
        alive = [n for n in order if processes.alive(recs[n])]
        for tier in STOP_TIERS:
            names = [n for n in alive if n in tier or (tier is STOP_TIERS[0] and n not in START_ORDER)]
            processes.stop([recs[n] for n in names])
            if "shop" in names and "main-api" in alive:
                _mark_shop(lab, False)
        left = [n for n in order if processes.alive(recs[n])]
        if left:
            raise Unavailable(f"still running after stop: {', '.join(left)}")
        for n in reversed(alive):
            say(f"stopped {LABELS.get(n, n)} (pid {recs[n]['pid']})")
        state["processes"] = {}
        lab.save(state)
        for n in START_ORDER:
            lab.ready_file(n).unlink(missing_ok=True)
    if purge:
        for site in SITES:  # a long lab path puts the data sockets in the temp folder
            sock = Path(state["endpoints"][site]["array"].get("data_socket") or lab.root)
            if lab.root not in sock.parents:
                sock.unlink(missing_ok=True)
        _purge(lab)
        say(f"removed the lab's files from {lab.root}")
    else:
        say(f"lab stopped; state kept in {lab.root} (dr-kit lab up to start it again)")
    return {"dir": str(lab.root), "stopped": alive, "purged": purge}


def _purge(lab: LabDir) -> None:
    """Delete what the lab wrote, then the folder if that leaves it empty (``--dir .`` is safe)."""
    for site in SITES:
        shutil.rmtree(lab.root / site, ignore_errors=True)
    for d in (lab.logs, lab.run, lab.tokens):
        shutil.rmtree(d, ignore_errors=True)
    for f in (lab.kubeconfig, lab.shop_control, lab.shop_status, lab.state_file):
        f.unlink(missing_ok=True)
    for stray in lab.root.glob(".*.tmp*"):  # an atomic write cut short
        stray.unlink(missing_ok=True)
    with contextlib.suppress(OSError):
        lab.root.rmdir()


# -- controls -----------------------------------------------------------------------------------------


def set_workload(dir: str | os.PathLike[str] | None, rate: float) -> dict[str, Any]:  # noqa: A002
    """Set the shop's transaction rate (per second; 0 pauses it). Returns the new controls."""
    rate = check_rate(rate)
    lab = LabDir.of(dir)
    lab.load()  # NotFound when there is no lab
    control = {**(_read_json(lab.shop_control) or {}), "rate": rate}
    _write_json(lab.shop_control, control)
    return control


def _link_call(url: str, body: dict[str, Any] | None = None, *, token: str | None = None) -> dict[str, Any]:
    data = json.dumps(body).encode() if body is not None else None
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    req = urllib.request.Request(url + "/link", data=data, method="POST" if body is not None else "GET",
                                 headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=QUERY_TIMEOUT) as r:
            return json.loads(r.read())
    except urllib.error.HTTPError as e:
        try:
            msg = json.loads(e.read()).get("message", "")
        except ValueError:
            msg = f"HTTP {e.code}"
        raise InvalidInput(f"link emulator refused the change: {msg}") from None
    except (urllib.error.URLError, OSError) as e:
        raise Unavailable(f"the link emulator at {url} is unreachable ({getattr(e, 'reason', e)}); "
                          "is the lab up? (dr-kit lab status)") from None


def set_link(dir: str | os.PathLike[str] | None, delay_ms: float | None = None,  # noqa: A002
             rate_mbit: float | None = None, cut: bool | None = None) -> dict[str, Any]:
    """Change the replication link: one-way delay, rate cap (0 = unlimited), cut or restore.

    Delay and rate are remembered in ``lab.json`` and survive a restart of the link; a cut
    does not (a restarted link is whole).  Returns the link's state.
    """
    body: dict[str, Any] = {}
    if delay_ms is not None:
        body["delay_ms"] = _check_number(delay_ms, "the link delay (ms)", 0, 10_000)
    if rate_mbit is not None:
        body["rate_mbit"] = _check_number(rate_mbit, "the link rate (Mbit/s, 0 = unlimited)", 0, 1e6)
    if cut is not None:
        body["cut"] = bool(cut)
    lab = LabDir.of(dir)
    lab.load()  # NotFound before anything is created
    with _locked(lab):
        state = lab.load()
        result = _link_call(state["endpoints"]["link"]["control_url"], body, token=lab.token("link"))
        settings = state.setdefault("link_settings", {})
        for k in ("delay_ms", "rate_mbit"):
            if k in body:
                settings[k] = body[k]
        lab.save(state)
    return result


def kill(dir: str | os.PathLike[str] | None, name: str) -> int:  # noqa: A002
    """SIGKILL one of the lab's processes (``main-api``, ``shop``, ...), as a fault drill
    does; returns its pid.  ``up`` starts it again."""
    if name not in START_ORDER:
        raise InvalidInput(f"no lab process {name!r}; processes: {', '.join(START_ORDER)}")
    lab = LabDir.of(dir)
    rec = (lab.load().get("processes") or {}).get(name)
    if not processes.alive(rec):
        raise Conflict(f"the {LABELS[name]} is not running")
    assert rec is not None
    processes.kill(rec)
    return int(rec["pid"])


# -- status -------------------------------------------------------------------------------------------

HEALTH_STALE_S = 10.0  # a process report older than this is itself a sign of trouble


def _operator_health(lab: LabDir) -> str | None:
    """What the operator's /readyz says when it is not ready (None: ready, or not known)."""
    import re

    try:
        with open(lab.log_file("operator"), "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 65536))
            text = f.read().decode(errors="replace")
    except OSError:
        return None
    urls = re.findall(r"health and metrics on (http://127\.0\.0\.1:\d+)", text)
    if not urls:
        return None
    try:
        with urllib.request.urlopen(urls[-1] + "/readyz", timeout=1.0):
            return None
    except urllib.error.HTTPError as e:
        return f"not ready: {e.read().decode(errors='replace').strip()[:200]}"
    except (urllib.error.URLError, OSError) as e:
        return f"its health endpoint does not answer ({getattr(e, 'reason', e)})"


def _degraded(lab: LabDir, procs: dict[str, Any], sites: dict[str, Any], link: dict[str, Any],
              shop: dict[str, Any]) -> list[str]:
    """What does not work right now, one line each: dead processes, unreachable servers,
    and what the long-running processes report they cannot reach."""
    from dr_kit.lab.controllers import health_file

    out = [f"{LABELS.get(n, n)}: not running (pid {p['pid']}; dr-kit lab up starts it again)"
           for n, p in procs.items() if p["pid"] and not p["alive"]]
    for site, s in sites.items():
        if not s["api"]["reachable"]:
            out.append(f"the {site} API server: unreachable ({s['api'].get('error', '')})")
        if not s["array"]["reachable"]:
            out.append(f"the {site} array: unreachable ({s['array'].get('error', '')})")
    if not link.get("reachable", True):
        out.append("the replication link: its control API is unreachable")
    now = time.time()
    for site in SITES:
        name = f"{site}-controllers"
        if not procs[name]["alive"]:
            continue
        h = _read_json(Path(health_file(lab, site)))
        if h is None or h.get("pid") != procs[name]["pid"]:
            out.append(f"{LABELS[name]}: no health report yet")
            continue
        age = now - float(h.get("updated") or 0)
        if age > HEALTH_STALE_S:
            out.append(f"{LABELS[name]}: no health report for {age:.0f} s")
        out += [f"{LABELS[name]}: cannot reach {d}" for d in h.get("degraded") or []]
        if not h.get("synced"):
            out.append(f"{LABELS[name]}: watch caches not synced yet")
    if procs["operator"]["alive"]:
        if not sites["main"]["api"]["reachable"]:
            out.append("operator: the main API server is unreachable (it relists when it answers)")
        else:
            why = _operator_health(lab)
            if why:
                out.append(f"operator: {why}")
    rep = shop.get("status") or {}
    if shop.get("alive") and rep:
        if rep.get("state") == "degraded":
            since = now - float(rep.get("degraded_since") or now)
            out.append(f"shop application: transactions fail for {since:.0f} s, it reconnects "
                       f"({rep.get('last_error', '')[:200]})")
        age = now - float(rep.get("updated") or 0)
        if age > HEALTH_STALE_S:
            out.append(f"shop application: no report for {age:.0f} s")
    return out



def _site_objects(lab: LabDir, site: str) -> dict[str, Any]:
    try:
        kube = _kube(lab, site, timeout=QUERY_TIMEOUT)
        kube.api.configuration.retries = 0
        nss = kube.items("Namespace")
        pvcs = kube.items("PersistentVolumeClaim")
        return {"reachable": True,
                "namespaces": sorted(n["metadata"]["name"] for n in nss),
                "pvcs": [{"namespace": p["metadata"]["namespace"], "name": p["metadata"]["name"],
                          "phase": (p.get("status") or {}).get("phase"),
                          "volume": (p.get("spec") or {}).get("volumeName")} for p in pvcs]}
    except Exception as e:  # noqa: BLE001 - any failure means: not reachable now
        return {"reachable": False, "error": _one_line(e), "namespaces": [], "pvcs": []}


def _one_line(e: Exception) -> str:
    if isinstance(e, DrKitError):
        return str(e).splitlines()[0][:200] if str(e) else type(e).__name__
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[-1] if text else ''}"[:200]


def _array_view(endpoint: dict[str, str], token: str | None) -> dict[str, Any]:
    from dr_kit.storage.client import ArrayClient

    try:
        st = ArrayClient(endpoint["mgmt_url"], endpoint.get("data_socket"), token=token,
                         timeout=QUERY_TIMEOUT).status()
    except Exception as e:  # noqa: BLE001
        return {"reachable": False, "error": _one_line(e), "volumes": [], "groups": [], "snapshots": 0}
    return {"reachable": True, "volumes": st.get("volumes", []), "groups": st.get("groups", []),
            "snapshots": len(st.get("snapshots", [])), "problems": st.get("problems", [])}


def status(dir: str | os.PathLike[str] | None = None) -> dict[str, Any]:  # noqa: A002
    """Everything about the lab in ``dir``: processes (alive by pid), sites, arrays, groups, lag, shop."""
    lab = LabDir.of(dir)
    state = lab.load()
    recs = state.get("processes") or {}
    procs = {}
    for n in [*START_ORDER, *(n for n in recs if n not in START_ORDER)]:
        rec = recs.get(n)
        procs[n] = {"pid": rec["pid"] if rec else None, "alive": processes.alive(rec),
                    "cmd": rec["cmd"] if rec else None, "log": str(lab.log_file(n))}
    sites: dict[str, Any] = {}
    for site in SITES:
        ep = state["endpoints"][site]
        objs = _site_objects(lab, site) if lab.kubeconfig.exists() else {
            "reachable": False, "error": "no kubeconfig", "namespaces": [], "pvcs": []}
        sites[site] = {"api": {"url": ep["api"], "reachable": objs.pop("reachable"),
                               **({"error": objs.pop("error")} if "error" in objs else {})},
                       **objs, "array": {"endpoint": ep["array"],
                                         **_array_view(ep["array"], lab.array_token(site))}}
    groups = []
    for site in SITES:
        for g in sites[site]["array"]["groups"]:
            groups.append({"name": g["name"], "site": site, "side": g.get("side"),
                           "state": g.get("state"), "mode": g.get("mode"),
                           "message": g.get("message", ""), "members": g.get("members", {}),
                           "lag": g.get("lag")})
    link_ep = state["endpoints"]["link"]
    try:
        link = {"reachable": True, **_link_call(link_ep["control_url"], token=lab.token("link"))}
    except Unavailable as e:
        link = {"reachable": False, "error": str(e), **link_ep}
    shop = {"control": _read_json(lab.shop_control), "status": _read_json(lab.shop_status),
            "alive": procs["shop"]["alive"]}
    running = all(p["alive"] for p in procs.values()) and bool(recs)
    degraded = _degraded(lab, procs, sites, link, shop) if recs else []
    return {"dir": str(lab.root), "kubeconfig": str(lab.kubeconfig), "version": state.get("version"),
            "running": running, "degraded": degraded,
            "seeded": bool(state.get("seeded")), "ports": state["ports"],
            "endpoints": state["endpoints"], "processes": procs, "sites": sites,
            "groups": groups, "link": link, "shop": shop}
