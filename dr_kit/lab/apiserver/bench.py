"""Scale figures of one site's API server: ``python -m dr_kit.lab.apiserver.bench``.

Starts the server as its own process (HTTPS, as in the lab) in a temporary folder,
fills it like a large protected estate (``--namespaces`` x ``--pvcs`` claims, one PV per
claim, one VolumeGroupReplication per namespace) and prints:

- creation rate;
- list latency (p50/p95 over ``--rounds``): every PVC, one namespace's PVCs, every PVC
  by label, every PVC as the ``Table`` kubectl asks for, every PV;
- watch fan-out: ``--watchers`` clients watch every PVC (half of them with a label
  selector that matches); PVCs are patched one after the other and the delay from each
  patch's answer to each watcher's event is recorded (p50/p99/max), with the number of
  events delivered;
- deleting one namespace of ``--pvcs`` claims, one of as many claims as the whole estate
  and then every other namespace (garbage collection included);
- the server's thread count and resident memory.

Figures depend on the machine and its load; compare runs made side by side.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import secrets
import shutil
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import psutil

from .tls import read_ca


class Conn:
    """One keep-alive HTTPS connection to the server."""

    def __init__(self, port: int, token: str, ca: str) -> None:
        self.port, self.token = port, token
        self.ctx = ssl.create_default_context(cadata=ca)
        self.conn = http.client.HTTPSConnection("127.0.0.1", port, context=self.ctx, timeout=60)

    def call(self, method: str, path: str, body: Any = None, ctype: str = "application/json",
             accept: str = "application/json") -> tuple[int, Any]:
        data = None if body is None else json.dumps(body).encode()
        self.conn.request(method, path, body=data, headers={
            "Authorization": f"Bearer {self.token}", "Content-Type": ctype, "Accept": accept})
        resp = self.conn.getresponse()
        raw = resp.read()
        return resp.status, json.loads(raw) if raw else None


def _pcts(samples: list[float]) -> str:
    ms = sorted(s * 1000 for s in samples)
    p95 = ms[min(len(ms) - 1, int(len(ms) * 0.95))]
    return f"p50 {statistics.median(ms):7.1f} ms   p95 {p95:7.1f} ms"


class Server:
    """CPU time the server process spends, to measure its own cost whatever the load."""

    def __init__(self, pid: int) -> None:
        self.proc = psutil.Process(pid)

    def cpu(self) -> float:
        t = self.proc.cpu_times()
        return t.user + t.system


def _timed(fn: Any, rounds: int, server: Server) -> str:
    """Wall-clock percentiles of ``fn`` and the server's CPU time per call."""
    out = []
    cpu = server.cpu()
    for _ in range(rounds):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    per_call = (server.cpu() - cpu) / rounds * 1000
    return _pcts(out) + f"   server CPU {per_call:6.1f} ms"


def _pvc(ns: str, i: int) -> dict[str, Any]:
    return {"metadata": {"name": f"db-{i}", "namespace": ns,
                         "labels": {"app": "shop", "tier": "db" if i % 2 else "cache"}},
            "spec": {"accessModes": ["ReadWriteOnce"], "storageClassName": "lab-array",
                     "resources": {"requests": {"storage": "64Mi"}}}}


def _pv(ns: str, i: int) -> dict[str, Any]:
    return {"metadata": {"name": f"pv-{ns}-{i}"},
            "spec": {"accessModes": ["ReadWriteOnce"], "capacity": {"storage": "64Mi"},
                     "claimRef": {"namespace": ns, "name": f"db-{i}"},
                     "csi": {"driver": "lab.dr-kit.io", "volumeHandle": f"{ns}-{i}"}}}


def _vgr(ns: str) -> dict[str, Any]:
    return {"apiVersion": "replication.storage.openshift.io/v1alpha1",
            "kind": "VolumeGroupReplication", "metadata": {"name": "shop", "namespace": ns},
            "spec": {"volumeGroupReplicationClassName": "lab-cg", "replicationState": "primary",
                     "source": {"selector": {"matchLabels": {"app": "shop"}}}}}


class Watcher(threading.Thread):
    """Reads one watch stream; records when each ``MODIFIED`` event of a PVC arrived."""

    def __init__(self, port: int, token: str, ca: str, query: str) -> None:
        super().__init__(daemon=True)
        self.conn = Conn(port, token, ca)
        self.query = query
        self.seen: dict[str, float] = {}
        self.events = 0
        self.ready = threading.Event()

    def run(self) -> None:
        c = self.conn.conn
        c.request("GET", "/api/v1/persistentvolumeclaims?watch=1&timeoutSeconds=600"
                  "&resourceVersion=" + self.query, headers={
                      "Authorization": f"Bearer {self.conn.token}"})
        resp = c.getresponse()
        self.ready.set()
        try:
            while True:
                line = resp.readline()
                if not line:
                    return
                event = json.loads(line)
                self.events += 1
                if event["type"] == "MODIFIED":
                    meta = event["object"]["metadata"]
                    key = f"{meta['namespace']}/{meta['name']}/{meta['labels'].get('round')}"
                    self.seen[key] = time.perf_counter()
        except (OSError, ValueError, http.client.HTTPException):
            return


def run(namespaces: int, pvcs: int, rounds: int, watchers: int, patches: int,
        server_from: str | None = None) -> None:
    folder = Path(tempfile.mkdtemp(prefix="apiserver-bench-"))
    token = secrets.token_hex(16)
    ready = folder / "port"
    env = {**os.environ, "DR_KIT_APISERVER_TOKEN": token}
    if server_from:  # another checkout's server, to compare side by side
        env["PYTHONPATH"] = server_from
    proc = subprocess.Popen(
        [sys.executable, "-m", "dr_kit.lab.apiserver", "--state-dir", str(folder / "state"),
         "--ready-file", str(ready)], env=env, cwd=server_from or folder)
    try:
        deadline = time.monotonic() + 60
        while not ready.exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit("error: the API server did not start")
            time.sleep(0.05)
        port = int(ready.read_text())
        ca = read_ca(folder / "state")
        _measure(port, token, ca, proc.pid, namespaces, pvcs, rounds, watchers, patches)
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        shutil.rmtree(folder, ignore_errors=True)


def _measure(port: int, token: str, ca: str, pid: int, namespaces: int, pvcs: int,
             rounds: int, watchers: int, patches: int) -> None:
    c = Conn(port, token, ca)
    server = Server(pid)
    total = namespaces * pvcs
    print(f"API server at 127.0.0.1:{port} (pid {pid}); {namespaces} namespaces x {pvcs} PVCs "
          f"= {total} PVCs, {total} PVs, {namespaces} VolumeGroupReplications")
    t = time.perf_counter()
    for n in range(namespaces):
        ns = f"ns-{n:03d}"
        assert c.call("POST", "/api/v1/namespaces", {"metadata": {"name": ns}})[0] == 201
        for i in range(pvcs):
            status, body = c.call("POST", f"/api/v1/namespaces/{ns}/persistentvolumeclaims",
                                  _pvc(ns, i))
            assert status == 201, body
            assert c.call("POST", "/api/v1/persistentvolumes", _pv(ns, i))[0] == 201
        assert c.call("POST", "/apis/replication.storage.openshift.io/v1alpha1/namespaces/"
                      f"{ns}/volumegroupreplications", _vgr(ns))[0] == 201
    took = time.perf_counter() - t
    objects = namespaces * (2 * pvcs + 2)
    print(f"created {objects} objects in {took:.1f} s ({objects / took:.0f} objects/s)")

    def listing(path: str, accept: str = "application/json", want: int | None = None) -> None:
        status, body = c.call("GET", path, accept=accept)
        assert status == 200
        got = len(body.get("items") or body.get("rows") or [])
        assert want is None or got == want, (path, got, want)

    table = "application/json;as=Table;v=v1;g=meta.k8s.io,application/json"
    print(f"list every PVC ({total}):          "
          + _timed(lambda: listing("/api/v1/persistentvolumeclaims", want=total), rounds, server))
    print(f"list one namespace's PVCs ({pvcs}):   "
          + _timed(lambda: listing("/api/v1/namespaces/ns-000/persistentvolumeclaims",
                                         want=pvcs), rounds, server))
    print(f"list PVCs by label ({total // 2}):        "
          + _timed(lambda: listing("/api/v1/persistentvolumeclaims?labelSelector=tier%3Ddb",
                                         want=total // 2), rounds, server))
    print(f"list every PVC as a Table ({total}): "
          + _timed(lambda: listing("/api/v1/persistentvolumeclaims", table, total), rounds, server))
    print(f"list every PV ({total}):           "
          + _timed(lambda: listing("/api/v1/persistentvolumes", want=total), rounds, server))

    rv = c.call("GET", "/api/v1/persistentvolumeclaims?limit=1")[1]["metadata"]["resourceVersion"]
    ws = []
    for i in range(watchers):
        query = rv + ("&labelSelector=app%3Dshop" if i % 2 else "")
        ws.append(Watcher(port, token, ca, query))
    for w in ws:
        w.start()
        w.ready.wait(30)
    sent: dict[str, float] = {}
    t, cpu = time.perf_counter(), server.cpu()
    for k in range(patches):
        ns, i = f"ns-{k % namespaces:03d}", (k // namespaces) % pvcs
        status, _ = c.call("PATCH", f"/api/v1/namespaces/{ns}/persistentvolumeclaims/db-{i}",
                           {"metadata": {"labels": {"round": str(k)}}},
                           ctype="application/merge-patch+json")
        assert status == 200
        sent[f"{ns}/db-{i}/{k}"] = time.perf_counter()
    write_time = time.perf_counter() - t
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and any(len(w.seen) < patches for w in ws):
        time.sleep(0.05)
    write_cpu = (server.cpu() - cpu) / patches * 1000
    delays = [w.seen[key] - at for w in ws for key, at in sent.items() if key in w.seen]
    delivered = sum(len(w.seen) for w in ws)
    ms = sorted(d * 1000 for d in delays)
    print(f"watch fan-out: {patches} patches ({patches / write_time:.0f}/s while {watchers} "
          f"watchers listen), {delivered}/{patches * watchers} events delivered; delay from "
          f"answer to event p50 {statistics.median(ms):.1f} ms, "
          f"p99 {ms[int(len(ms) * 0.99)]:.1f} ms, max {ms[-1]:.1f} ms; server CPU "
          f"{write_cpu:.2f} ms per patch and its {watchers} events")

    proc = psutil.Process(pid)
    print(f"server: {proc.num_threads()} threads, {proc.memory_info().rss / 2**20:.0f} MiB "
          f"resident, {len(ws)} open watches")
    t, cpu = time.perf_counter(), server.cpu()
    assert c.call("DELETE", "/api/v1/namespaces/ns-001")[0] == 200
    print(f"delete a namespace of {pvcs} PVCs and its VolumeGroupReplication: "
          f"{(time.perf_counter() - t) * 1000:.1f} ms (server CPU "
          f"{(server.cpu() - cpu) * 1000:.1f} ms)")
    assert c.call("POST", "/api/v1/namespaces", {"metadata": {"name": "bulk"}})[0] == 201
    for i in range(total):
        assert c.call("POST", "/api/v1/namespaces/bulk/persistentvolumeclaims",
                      _pvc("bulk", i))[0] == 201
    t, cpu = time.perf_counter(), server.cpu()
    assert c.call("DELETE", "/api/v1/namespaces/bulk")[0] == 200
    print(f"delete a namespace of {total} PVCs: {time.perf_counter() - t:.2f} s "
          f"(server CPU {server.cpu() - cpu:.2f} s)")
    t, cpu = time.perf_counter(), server.cpu()
    for n in range(2, namespaces):
        assert c.call("DELETE", f"/api/v1/namespaces/ns-{n:03d}")[0] == 200
    print(f"delete the other {namespaces - 2} namespaces: {time.perf_counter() - t:.2f} s "
          f"(server CPU {server.cpu() - cpu:.2f} s)")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m dr_kit.lab.apiserver.bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--namespaces", type=int, default=100)
    p.add_argument("--pvcs", type=int, default=10, help="PVCs per namespace")
    p.add_argument("--rounds", type=int, default=20, help="repetitions of each list")
    p.add_argument("--watchers", type=int, default=10)
    p.add_argument("--patches", type=int, default=200)
    p.add_argument("--server-from", metavar="CHECKOUT",
                   help="run the server from another checkout (e.g. to compare with main)")
    args = p.parse_args(argv)
    if min(args.namespaces, args.pvcs, args.rounds, args.watchers, args.patches) < 2:
        print("error: every count must be at least 2", file=sys.stderr)
        return 2
    run(args.namespaces, args.pvcs, args.rounds, args.watchers, args.patches, args.server_from)
    return 0


if __name__ == "__main__":
    sys.exit(main())
