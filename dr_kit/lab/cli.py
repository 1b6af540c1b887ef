"""``dr-kit lab up|status|down|workload|link|crash``: the embedded two-site lab from the shell.

Numbers are checked here rather than by argparse so that a bad value ends in the one-line
``error: ...`` of every dr_kit command (exit 2), like every other user error.
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

from dr_kit.errors import InvalidInput
from dr_kit.lab import manager
from dr_kit.lab.layout import DEFAULT_DIR


def _number(value: str | None, option: str) -> float | None:
    if value is None:
        return None
    try:
        return float(value)
    except ValueError:
        raise InvalidInput(f"{option} takes a number, got {value!r}") from None


def _say(line: str) -> None:
    print(line, flush=True)


# -- commands -------------------------------------------------------------------------------


def _cmd_up(args: argparse.Namespace) -> int:
    rate = _number(args.rate, "--rate")
    manager.up(args.dir, rate=rate, timeout=args.timeout, progress=_say)
    return 0


def _cmd_down(args: argparse.Namespace) -> int:
    manager.down(args.dir, purge=args.purge, progress=_say)
    return 0


def _cmd_status(args: argparse.Namespace) -> int:
    st = manager.status(args.dir)
    if args.json:
        print(json.dumps(st, indent=2, sort_keys=True))
    else:
        print(render_status(st))
    return 0 if st["running"] else 1


def _cmd_workload(args: argparse.Namespace) -> int:
    rate = _number(args.rate, "--rate")
    assert rate is not None  # --rate is required
    control = manager.set_workload(args.dir, rate)
    r = control["rate"]
    print(f"shop rate set to {r:g} transactions/s" + (" (paused)" if r == 0 else ""))
    return 0


def _cmd_crash(args: argparse.Namespace) -> int:
    r = manager.crash(args.dir, args.site)
    killed = ", ".join(r["killed"]) or "nothing (no process of it was running)"
    print(f"{args.site} site crashed (SIGKILL): {killed}; `dr-kit lab up --dir {args.dir}` brings it back")
    return 0


def _cmd_link(args: argparse.Namespace) -> int:
    cut = True if args.cut else False if args.restore else None
    st = manager.set_link(args.dir, delay_ms=_number(args.delay, "--delay"),
                          rate_mbit=_number(args.rate, "--rate"), cut=cut)
    print(_link_line(st))
    return 0


# -- the status table -----------------------------------------------------------------------------


def _table(rows: list[list[str]], header: list[str]) -> list[str]:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    return ["  " + "  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
            for r in [header, *rows]]


def _size(n: float | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:g} {unit}" if unit == "B" else f"{n:.0f} {unit}"
        n /= 1024
    return str(n)


def _lag(lag: dict[str, Any] | None) -> list[str]:
    if not lag:
        return ["-", "-", "-"]
    t = lag.get("time_lag_s")
    seq, byt = lag.get("sequence_lag"), lag.get("byte_lag")
    return ["unknown" if seq is None else str(seq), "unknown" if byt is None else _size(byt),
            "unknown" if t is None else f"{t:.3f} s"]


def _link_line(link: dict[str, Any]) -> str:
    if not link.get("reachable", True):
        return f"link {link.get('listen', '?')} -> {link.get('target', '?')}: unreachable"
    rate = link.get("rate_mbit") or 0
    return (f"link {link['listen']} -> {link['target']}: delay {link['delay_ms']:g} ms, rate "
            f"{'unlimited' if not rate else f'{rate:g} Mbit/s'}, {'CUT' if link['cut'] else 'up'}, "
            f"{link.get('connections', 0)} connections, {_size(link.get('bytes_forwarded'))} forwarded")


def render_status(st: dict[str, Any]) -> str:
    """The human view of :func:`manager.status`."""
    procs = st["processes"]
    n_alive = sum(p["alive"] for p in procs.values())
    degraded = st.get("degraded") or []
    state = ("running" if not degraded else "running, DEGRADED") if st["running"] else "NOT running"
    out = [f"lab {st['dir']}: {state} ({n_alive}/{len(procs)} processes alive)",
           f"kubeconfig {st['kubeconfig']} (contexts main, backup)"]
    if degraded:
        out += ["", "degraded"] + [f"  {line}" for line in degraded]
    out += ["", "sites"]
    rows = []
    for site, s in st["sites"].items():
        arr = s["array"]
        rows.append([site, s["api"]["url"], "up" if s["api"]["reachable"] else "DOWN",
                     arr["endpoint"]["mgmt_url"], "up" if arr["reachable"] else "DOWN",
                     ", ".join(s["namespaces"]) or "-"])
    out += _table(rows, ["SITE", "API", "", "ARRAY", "", "NAMESPACES"])
    out += ["", "processes"]
    out += _table([[n, str(p["pid"] or "-"),
                    "alive" if p["alive"] else "DEAD" if p["pid"] else "stopped"]
                   for n, p in procs.items()], ["NAME", "PID", "STATE"])
    claims = {(site, c["volume"]): f"{c['namespace']}/{c['name']}"
              for site, s in st["sites"].items() for c in s["pvcs"] if c.get("volume")}
    rows = [[site, v["name"], _size(v.get("size")), v.get("role") or "-", v.get("group") or "-",
             claims.get((site, v["name"]), "-")]
            for site, s in st["sites"].items() for v in s["array"]["volumes"]]
    out += ["", "array volumes"]
    out += _table(rows, ["SITE", "VOLUME", "SIZE", "ROLE", "GROUP", "PVC"]) if rows else ["  (none)"]
    rows = [[g["site"], g["name"], g.get("state") or "-", *_lag(g.get("lag"))] for g in st["groups"]]
    out += ["", "consistency groups"]
    out += (_table(rows, ["SITE", "GROUP", "STATE", "SEQ LAG", "BYTE LAG", "TIME LAG"])
            if rows else ["  (none: protect a namespace to create one)"])
    out += ["", _link_line(st["link"])]
    shop = st["shop"]
    ctl, rep = shop.get("control") or {}, shop.get("status") or {}
    line = f"shop: rate {ctl.get('rate', '?')} tx/s, {'running' if shop['alive'] else 'NOT running'}"
    if rep:
        age = time.time() - float(rep.get("updated") or 0)
        line += (f"; {rep.get('committed', 0)} committed, {rep.get('failed', 0)} failed"
                 + (f", p99 {rep['p99_ms']:.1f} ms" if rep.get("p99_ms") is not None else "")
                 + f" (reported {age:.0f} s ago)")
        if rep.get("last_error"):
            line += f"; last error: {rep['last_error']}"
    out.append(line)
    return "\n".join(out)


# -- argparse ---------------------------------------------------------------------------------------


def _dir_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dir", default=DEFAULT_DIR, help=f"lab directory (default: {DEFAULT_DIR})")


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register ``lab up|status|down|workload|link`` on the main ``dr-kit`` parser."""
    lab = subparsers.add_parser("lab", help="the embedded two-site lab on this machine",
                                description="Two sites (main, backup) on this machine, each with a "
                                "Kubernetes-API-compatible control plane, a software array and its "
                                "storage controllers; reached through DIR/kubeconfig.")
    sub = lab.add_subparsers(dest="lab_command", required=True, metavar="COMMAND")

    p = sub.add_parser("up", help="start the lab (or the parts of it that are not running)")
    _dir_arg(p)
    p.add_argument("--rate", metavar="TX_PER_S",
                   help=f"shop transactions per second (default {manager.DEFAULT_RATE:g} on the "
                   "first up; later ups keep the current rate)")
    p.add_argument("--timeout", type=float, default=60.0, help=argparse.SUPPRESS)
    p.set_defaults(func=_cmd_up)

    p = sub.add_parser("status", help="sites, processes, volumes, groups and lag, shop, and what "
                       "is degraded (exit 1 when a process is not running)")
    _dir_arg(p)
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=_cmd_status)

    p = sub.add_parser("down", help="stop every process of the lab (state is kept)")
    _dir_arg(p)
    p.add_argument("--purge", action="store_true", help="also delete the lab directory")
    p.set_defaults(func=_cmd_down)

    p = sub.add_parser("workload", help="set the shop's transaction rate (0 pauses it)")
    _dir_arg(p)
    p.add_argument("--rate", metavar="TX_PER_S", required=True, help="transactions per second")
    p.set_defaults(func=_cmd_workload)

    p = sub.add_parser("crash", help="kill every process of one site at once (SIGKILL): the "
                       "disaster of a DR drill; `lab up` brings the site back")
    _dir_arg(p)
    p.add_argument("site", choices=("main", "backup"))
    p.set_defaults(func=_cmd_crash)

    p = sub.add_parser("link", help="slow down, cut or restore the replication link "
                       "(no option: show it)")
    _dir_arg(p)
    p.add_argument("--delay", metavar="MS", help="one-way delay in milliseconds")
    p.add_argument("--rate", metavar="MBIT", help="rate cap in Mbit/s (0 = unlimited)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--cut", action="store_true", help="drop the link's connections and refuse new ones")
    g.add_argument("--restore", action="store_true", help="let replication through again")
    p.set_defaults(func=_cmd_link)
