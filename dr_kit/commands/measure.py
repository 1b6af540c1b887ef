"""``dr-kit crashtest``, ``dr-kit bench`` and ``dr-kit drill``: the measured claims."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path

from dr_kit.errors import DrKitError, InvalidInput

# ``bench --scale`` measures a whole lab, which the library must not import: the command
# line's entry point plugs the lab's scale benchmark in (see dr_kit.cli).
ScaleBench = Callable[[argparse.Namespace], int]
_SCALE: list[ScaleBench] = []


def plug_scale_bench(handler: ScaleBench) -> None:
    """What ``dr-kit bench --scale`` runs (set by the command line's entry point)."""
    _SCALE[:] = [handler]


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("crashtest", help="cut replication at random points and judge the backup images",
                       description="Run the shop workload with (a) one consistency group and (b) two "
                       "independent pairs, cut replication at random points, open the backup images "
                       "with SQLite and count collapsed and corrupt ones.")
    p.add_argument("--trials", type=int, default=50, help="cut points per configuration (default 50)")
    p.add_argument("--seed", type=int, default=1, help="random seed (default 1)")
    p.add_argument("--rate", type=float, default=150.0, help="shop transactions per second (default 150)")
    p.add_argument("--only", choices=("consistency_group", "independent"), help="run one configuration")
    p.add_argument("--workdir", help="keep the arrays in this folder (default: a temporary one)")
    p.add_argument("--json", action="store_true", help="print only the JSON result")
    p.set_defaults(func=_crashtest)

    p = sub.add_parser("bench", help="benchmarks of the brief's targets, side by side",
                       description="Commit latency off/async/sync at link delays 0, 5, 20 ms; journal "
                       "lag at 100 and 1,000 writes/s; apply throughput; CPU per shop transaction by "
                       "component; snapshot group time for small and large volumes; initial copy "
                       "throughput; peak array memory; PostgreSQL's asynchronous streaming "
                       "replication measured beside ours (--anchor).")
    p.add_argument("--quick", action="store_true", help="fewer rounds and a 256 MiB large volume")
    p.add_argument("--json", action="store_true", help="print only the JSON result")
    p.add_argument("--out", help="also write the JSON result and a plot (PNG) into this folder")
    p.add_argument("--workdir", help="keep the arrays in this folder (default: a temporary one)")
    p.add_argument("--scale", metavar="NSxPVC",
                   help="instead: the scale benchmark on a fresh lab, e.g. 100x10 (namespaces x "
                   "PVCs of 64 MiB with ~1 MiB of data each, the shop at 100 tx/s, all labelled "
                   "at once); with --workdir the lab is kept there")
    p.add_argument("--anchor", choices=("postgres", "none"), default="auto",
                   help="measure PostgreSQL's asynchronous streaming replication beside ours in the "
                   "same run (default: postgres when its server binaries are installed; a missing "
                   "server is a one-line note); none turns it off")
    p.add_argument("--placement", choices=("sites", "shared"), default="sites",
                   help="sites (default): the shop and the main array on one CPU, the link "
                   "emulator and the backup array on another, as two sites have their own "
                   "machines; shared: wherever the scheduler puts them")
    p.set_defaults(func=_bench)

    from dr_kit.drills import names
    p = sub.add_parser("drill", help="fault drills: break something, show nothing is lost",
                       description="Drills: " + ", ".join(names()) + ", or all.")
    p.add_argument("name", choices=[*names(), "all"])
    p.add_argument("--json", action="store_true", help="print only the JSON result")
    p.set_defaults(func=_drill)


def _crashtest(args: argparse.Namespace) -> int:
    from dr_kit import crashtest

    def progress(cfg: str, i: int, t: crashtest.Trial) -> None:
        if not args.json:
            print(f"  {cfg:<17} trial {i + 1:>3}/{args.trials}  {t.cut:<13} {t.verdict}", flush=True)

    configs = (args.only,) if args.only else ("consistency_group", "independent")
    result = crashtest.run(args.trials, args.seed, rate=args.rate, workdir=args.workdir,
                           configs=configs, progress=progress)
    summary = {k: v for k, v in result.items() if k != "details"}
    if args.json:
        print(json.dumps(summary))
        return 0
    print(json.dumps(summary, indent=2))
    for cfg, d in result["details"].items():
        print(f"{cfg}: {d['committed_orders']} orders committed at the main site, at most "
              f"{d['max_collapsed_orders']} orders without stock movement in one backup image")
    return 0


def _bench(args: argparse.Namespace) -> int:
    from dr_kit import bench

    if args.scale is not None:
        if args.quick or args.anchor != "auto" or args.placement != "sites":
            raise InvalidInput("--quick, --anchor and --placement do not apply to --scale")
        if not _SCALE:
            raise DrKitError("bench --scale needs the lab, which this installation does not "
                             "plug in; run it as dr-kit bench --scale")
        return _SCALE[0](args)
    result = bench.run(quick=args.quick, workdir=args.workdir, anchor=args.anchor,
                       placement=args.placement,
                       progress=None if args.json else (lambda s: print(s, flush=True)))
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "bench.json").write_text(json.dumps(result, indent=2))
        bench.plot(result).savefig(out / "bench.png", dpi=110)
    skipped = result["postgres"].get("skipped")
    if args.json:
        if skipped and args.anchor != "none":
            print(f"note: PostgreSQL anchor not run: {skipped}", file=sys.stderr)
        print(json.dumps(result))
        return 0
    print()
    print(f"{'target':<40} {'measured':>12}   {'goal':<10} verdict")
    for label, value, op, goal, ok in bench.verdicts(result):
        print(f"{label:<40} {value:>12.3f}   {op} {goal:<7} {'met' if ok else 'MISSED'}")
    print(f"{'peak array RSS, large volume (MB)':<40} {result['peak_rss_mb_1g']:>12.1f}   "
          f"(small volume: {result['large']['peak_rss_mb_small']:.1f} MB)")
    ci = result.get("async_over_off_p50_max_ci95")
    if ci:
        print(f"(async/off commit p50, worst delay: 95% interval {ci[0]:.3f}-{ci[1]:.3f} over "
              "the run's rounds, resampled)")
    print()
    print(f"{'async/off p50 at its worst delay, split':<40} {'measured':>12}")
    for key, label in bench.BREAKDOWN:
        print(f"{label:<40} {result[key]:>12.3f}")
    print()
    pg_head = f"PostgreSQL {result['postgres'].get('version', '')}".strip()
    print(f"{'beside PostgreSQL, same run':<40} {'dr_kit':>12}   {pg_head}")
    for label, ours, theirs in bench.comparison(result):
        their = f"{theirs:.3f}" if theirs is not None else "not run"
        print(f"{label:<40} {ours:>12.3f}   {their}")
    if skipped:
        print(f"(PostgreSQL anchor not run: {skipped})")
    print()
    print(f"{'CPU per shop transaction (us)':<40} {'measured':>12}")
    for key, label in bench.CPU_KEYS:
        print(f"{label:<40} {result[key]:>12.0f}")
    m = result["machine"]
    print(f"\nload average (1 min) on {m['cpus']} CPUs: {m['loadavg_1m_start']:.1f} at the start, "
          f"{m['loadavg_1m_end']:.1f} at the end")
    place = m["placement"]
    if place["mode"] == "sites":
        print(f"placement: shop and main array on CPU {place['main_cpu']}, link emulator and "
              f"backup array on CPU {place['backup_cpu']} (PostgreSQL likewise)")
    else:
        print("placement: shared (the scheduler's)")
    return 0


def _drill(args: argparse.Namespace) -> int:
    from dr_kit import drills

    names = drills.names() if args.name == "all" else [args.name]
    results = []
    for n in names:
        if not args.json:
            print(f"drill {n}:", flush=True)
        r = drills.run(n, progress=None if args.json else (lambda s: print(s, flush=True)))
        results.append(r)
        if not args.json:
            print(r["line"], flush=True)
    if args.json:
        print(json.dumps(results[0] if len(results) == 1 else results, default=str))
    return 0 if all(r["ok"] for r in results) else 1
