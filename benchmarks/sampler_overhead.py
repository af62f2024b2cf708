"""What the sampler and its friends cost (issue #9): throughput and server CPU per request.

One uvicorn server per variant (the helpers of ``wrk_throughput.py``), all
running for the whole run:

    bare                 the app without asgi_perf
    base                 PerfMiddleware(loop_monitor=False, memory_interval_s=0):
                         timing only, the reference for the features below
    loop_monitor         the loop monitor alone (memory_interval_s=0)
    memory_timeline      the memory timeline alone (loop_monitor=False), issue #11
    defaults             PerfMiddleware() defaults (loop monitor and timeline)
    sampler_window       base, measured inside a sampler window (100 Hz)
    continuous           PerfMiddleware(continuous=True, loop_monitor=False)
    sample_rate_0.01     PerfMiddleware(sample_rate=0.01, loop_monitor=False)
                         (pyinstrument per sampled request, profile_budget 0.02)
    pyinstrument_window  base, inside a pyinstrument window (1 ms)
    pyspy_window         base, inside a py-spy window (100 Hz)
    (yappi_window        base, inside a yappi window: only with --variants)

Three phases, every one interleaved (the order rotates each round):

1. Throughput: ``wrk -t1 -cC -dD`` per server per round; per round each
   variant's req/s over bare's (the ratio) and ``1 - variant / base`` (the
   feature's own cost); the median over rounds, against the targets.
2. Server CPU per request: wrk sends a fixed number of requests (a Lua
   script stops it, ``wrk_script(stop_after=n)``), and the server's
   utime + stime (``/proc/<pid>/stat``: every thread, the sampler's
   included) before and after, divided by the requests sent. A window
   variant's window is open around the counted run only; its stop (which
   builds the capture) is not counted. py-spy runs in its own process, a
   child of the server: its CPU is read the same way and reported apart,
   not in the server's figure.
3. Idle: every server without load for ``--idle-seconds`` (windows open on
   the window variants), CPU per second of wall clock.

    python benchmarks/sampler_overhead.py [--rounds 7] [--duration 5] [--connections 32]
        [--cpu-rounds 5] [--cpu-requests 10000] [--idle-seconds 30]
        [--variants bare,base,...] [--json results.json]

With ``taskset`` and two or more CPUs every server (and so py-spy, its
child) runs on CPU 0 and wrk on CPU 1, as in ``wrk_throughput.py``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from benchmarks.wrk_throughput import (
    Server,
    T,
    WindowedRuns,
    Wrk,
    cpu_prefixes,
    describe_stack,
    ensure_wrk,
    median_interval,
    start_server,
    start_window,
    stop,
    stop_window,
    wait_ready,
    wrk_script,
)

PREFIX = "/_perf"
BASE = "base"
BARE = "bare"
_TICK_S = 1.0 / os.sysconf("SC_CLK_TCK")
# Requests in flight when a counted wrk run stops still reach the server;
# this long after wrk exits they are served.
_SETTLE_S = 0.1


@dataclass(frozen=True)
class Variant:
    name: str
    options: dict[str, Any] | None  # None: the bare app
    window: str | None = None  # engine of a window around each measured run
    # Largest throughput loss against `base`, % (None: reported only).
    target_loss_pct: float | None = None
    # Largest CPU per request added to `base`'s, % (None: reported only).
    target_cpu_pct: float | None = None


_BASE_OPTIONS: dict[str, Any] = {"loop_monitor": False, "memory_interval_s": 0}
VARIANTS = {
    v.name: v
    for v in (
        Variant(BARE, None),
        Variant(BASE, _BASE_OPTIONS),
        Variant("loop_monitor", {"memory_interval_s": 0}, target_loss_pct=0.5),
        Variant("memory_timeline", {"loop_monitor": False}, target_cpu_pct=0.5),
        Variant("defaults", {}),
        Variant(
            "sampler_window", _BASE_OPTIONS, "sampler", target_loss_pct=2.0, target_cpu_pct=2.0
        ),
        Variant("continuous", {**_BASE_OPTIONS, "continuous": True}, target_loss_pct=1.0),
        Variant("sample_rate_0.01", {**_BASE_OPTIONS, "sample_rate": 0.01}, target_loss_pct=3.0),
        Variant("pyinstrument_window", _BASE_OPTIONS, "pyinstrument"),
        Variant("pyspy_window", _BASE_OPTIONS, "pyspy"),
        Variant("yappi_window", _BASE_OPTIONS, "yappi"),
    )
}
DEFAULT_VARIANTS = [name for name in VARIANTS if name != "yappi_window"]


# -- CPU time of a process, from /proc


def _stat_fields(path: str) -> list[str]:
    with open(path) as f:
        text = f.read()
    # The command name, in parentheses, may hold spaces: split after it.
    return text[text.rindex(")") + 2 :].split()


def cpu_seconds(pid: int) -> float:
    """utime + stime of process ``pid``: all its threads, exited ones included."""
    fields = _stat_fields(f"/proc/{pid}/stat")
    # Fields 14 and 15 of proc(5); the list starts at field 3.
    return (int(fields[11]) + int(fields[12])) * _TICK_S


def thread_cpu_seconds(pid: int) -> dict[int, float]:
    """utime + stime of each live thread of ``pid``, by thread id."""
    out: dict[int, float] = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            fields = _stat_fields(f"/proc/{pid}/task/{tid}/stat")
        except OSError:  # ended meanwhile
            continue
        out[int(tid)] = (int(fields[11]) + int(fields[12])) * _TICK_S
    return out


def children(pid: int) -> list[int]:
    """The child processes of ``pid`` (py-spy, for a py-spy window)."""
    kids: list[int] = []
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                kids += [int(k) for k in f.read().split()]
        except OSError:
            continue
    return kids


@dataclass
class CpuReading:
    """Server CPU over one stretch: the process, its main thread, and apart its children."""

    total_s: float = 0.0
    main_s: float = 0.0  # the event loop's thread (the process's first)
    children_s: float = 0.0

    @property
    def others_s(self) -> float:
        """Threads other than the loop's: the sampler's, above all."""
        return self.total_s - self.main_s


class CpuMeter:
    """Reads ``pid``'s CPU (and its children's) at start and at ``stop``."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.kids = children(pid)
        self._kids0 = self._kids_cpu()
        self._main0 = thread_cpu_seconds(pid).get(pid, 0.0)
        self._total0 = cpu_seconds(pid)

    def _kids_cpu(self) -> float:
        total = 0.0
        for kid in self.kids:
            with contextlib.suppress(OSError):
                total += cpu_seconds(kid)
        return total

    def stop(self) -> CpuReading:
        total = cpu_seconds(self.pid) - self._total0
        main = thread_cpu_seconds(self.pid).get(self.pid, 0.0) - self._main0
        return CpuReading(total, main, self._kids_cpu() - self._kids0)


# -- the servers and what they report about themselves


@dataclass
class Runner:
    """One variant's server, and how to run a measurement on it (in a window or not)."""

    variant: Variant
    server: Server
    windowed: WindowedRuns | None

    def within(self, duration_s: float, work: Callable[[], T]) -> T:
        """``work()``, inside a window of the variant's engine if it has one."""
        if self.windowed is None:
            return work()
        return self.windowed.around(self.server, duration_s, work)

    def wrk(self, wrk: Wrk, duration_s: int) -> float:
        """req/s of one wrk run (in a window if the variant has one)."""
        return self.within(duration_s, lambda: wrk.run(self.server, duration_s))


def get_json(client: httpx.Client, server: Server, path: str) -> dict[str, Any]:
    response = client.get(f"{server.url}{PREFIX}{path}")
    response.raise_for_status()
    answer: dict[str, Any] = response.json()
    return answer


def telemetry(client: httpx.Client, runner: Runner) -> dict[str, Any]:
    """What asgi_perf says about its sampler, loop monitor and request profiles."""
    if runner.variant.options is None:
        return {}
    stats = get_json(client, runner.server, "/stats")
    profiling = stats.get("profiling") or {}
    out: dict[str, Any] = {
        "requests": stats.get("requests"),
        "internal_errors": stats.get("internal_errors"),
        "sampler": profiling.get("sampler"),
    }
    if stats.get("loop"):
        loop = get_json(client, runner.server, "/loop")
        out["loop"] = {"pings": loop.get("pings"), "lag_ms": loop.get("lag_ms")}
    if profiling.get("continuous"):
        out["continuous"] = profiling["continuous"]
    if runner.variant.options.get("sample_rate"):
        out["profiled_requests"] = profiling.get("requests")
    return out


def window_summary(answers: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Medians of what the stop answers of a variant's windows said."""
    if not answers:
        return {}
    out: dict[str, Any] = {"windows": len(answers)}
    for key in ("duration_ms", "samples", "interval_s", "sampler_cpu_share", "size_bytes"):
        values = [float(a[key]) for a in answers if isinstance(a.get(key), (int, float))]
        if values:
            out[key] = statistics.median(values)
    if "samples" in out and "duration_ms" in out and out["duration_ms"]:
        # Samples of every thread sampled; a server with one busy thread gives the tick rate.
        out["samples_per_s"] = round(out["samples"] / (out["duration_ms"] / 1000), 1)
    return out


# -- the three phases


def rotated(runners: list[Runner], round_: int) -> list[Runner]:
    """Each round starts one further along: every variant takes every place in turn."""
    k = round_ % len(runners)
    return runners[k:] + runners[:k]


def throughput_phase(
    runners: list[Runner], wrk: Wrk, rounds: int, duration_s: int
) -> dict[str, list[float]]:
    results: dict[str, list[float]] = {r.variant.name: [] for r in runners}
    for round_ in range(rounds):
        for runner in rotated(runners, round_):
            rps = runner.wrk(wrk, duration_s)
            results[runner.variant.name].append(rps)
        cells = []
        for runner in runners:
            name = runner.variant.name
            cells.append(
                f"{name} {results[name][-1]:,.0f} ({results[name][-1] / results[BARE][-1]:.3f})"
            )
        print(f"round {round_ + 1}  " + "  ".join(cells), flush=True)
    return results


def cpu_phase(
    runners: list[Runner], wrk: Wrk, rounds: int, max_s: int
) -> dict[str, list[dict[str, float]]]:
    results: dict[str, list[dict[str, float]]] = {r.variant.name: [] for r in runners}
    for round_ in range(rounds):
        for runner in rotated(runners, round_):

            def counted(r: Runner = runner) -> dict[str, float]:
                meter = CpuMeter(r.server.proc.pid)
                t0 = time.perf_counter()
                sent = wrk.run_counted(r.server, max_s)
                wall = time.perf_counter() - t0
                time.sleep(_SETTLE_S)
                cpu = meter.stop()
                return {
                    "sent": sent,
                    "wall_s": wall,
                    "cpu_us": cpu.total_s / sent * 1e6,
                    "cpu_s": cpu.total_s,
                    "main_s": cpu.main_s,
                    "others_s": cpu.others_s,
                    "children_s": cpu.children_s,
                    "children": len(meter.kids),
                }

            results[runner.variant.name].append(runner.within(max_s, counted))
        print(
            f"cpu round {round_ + 1}  "
            + "  ".join(
                f"{r.variant.name} {results[r.variant.name][-1]['cpu_us']:.0f} us" for r in runners
            ),
            flush=True,
        )
    return results


def idle_phase(
    runners: list[Runner], seconds: float, client: httpx.Client
) -> dict[str, CpuReading]:
    """CPU of every server over ``seconds`` with no load, window variants in a window."""
    opened = []
    try:
        for r in runners:
            if r.variant.window is not None:
                wid = start_window(client, r.server, PREFIX, r.variant.window, seconds + 5)
                opened.append((r, wid))
        # After the windows started: py-spy is a child by now.
        meters = {r.variant.name: CpuMeter(r.server.proc.pid) for r in runners}
        time.sleep(seconds)
        return {name: meter.stop() for name, meter in meters.items()}
    finally:
        for r, wid in opened:
            stop_window(client, r.server, PREFIX, wid)


# -- the report


def verdict(loss_low: float, loss_high: float, loss: float, target: float | None) -> str:
    if target is None:
        return "reported"
    met = "met" if loss <= target else "MISSED"
    if loss_low <= target < loss_high:
        met += " (not resolved: the interval spans it)"
    return met


def report_throughput(
    results: dict[str, list[float]], variants: list[Variant]
) -> list[dict[str, Any]]:
    print(
        f"\n{'variant':<20} {'req/s':>8} {'vs bare':>8} {'interval':>13} "
        f"{'loss vs base %':>14} {'interval':>13} {'target %':>8}  verdict"
    )
    rows = []
    for v in variants:
        rps = results[v.name]
        vs_bare = [x / b for x, b in zip(rps, results[BARE], strict=True)]
        loss = [(1 - x / b) * 100 for x, b in zip(rps, results[BASE], strict=True)]
        ratio = statistics.median(vs_bare)
        r_low, r_high, _ = median_interval(vs_bare)
        l_med = statistics.median(loss)
        l_low, l_high, coverage = median_interval(loss)
        row = {
            "variant": v.name,
            "rps_median": statistics.median(rps),
            "rps": rps,
            "ratio_vs_bare": ratio,
            "ratio_interval": [r_low, r_high],
            "loss_vs_base_pct": l_med,
            "loss_interval_pct": [l_low, l_high],
            "coverage": coverage,
            "loss_vs_base_min_max": [min(loss), max(loss)],
            "target_pct": v.target_loss_pct,
        }
        if v.name == BARE:
            loss_text, verdict_text = "-", ""
            interval = ""
        elif v.name == BASE:
            # base's own loss against bare: the timing middleware (issue #8's 3 %).
            loss_text = f"{(1 - ratio) * 100:.1f} vs bare"
            interval, verdict_text = "", ""
        else:
            loss_text = f"{l_med:.1f}"
            interval = f"{l_low:.1f}..{l_high:.1f}"
            verdict_text = verdict(l_low, l_high, l_med, v.target_loss_pct)
        row["verdict"] = verdict_text
        target = "-" if v.target_loss_pct is None else f"{v.target_loss_pct:g}"
        print(
            f"{v.name:<20} {row['rps_median']:>8,.0f} {ratio:>8.3f} "
            f"{r_low:>6.3f}..{r_high:<5.3f} {loss_text:>14} {interval:>13} {target:>8}  "
            f"{verdict_text}"
        )
        rows.append(row)
    n = len(results[BARE])
    _, _, coverage = median_interval(list(range(n)))
    print(f"(intervals: order statistics around the median of {n} rounds, coverage {coverage:.0%})")
    return rows


def report_cpu(
    results: dict[str, list[dict[str, float]]], variants: list[Variant]
) -> list[dict[str, Any]]:
    print(
        f"\n{'variant':<20} {'CPU us/req':>10} {'min..max':>13} {'vs base':>8} {'min..max':>13} "
        f"{'added':>7} {'loop thr':>8} {'other thr':>9} {'py-spy':>7}  verdict"
    )
    rows = []
    base = results[BASE]
    for v in variants:
        runs = results[v.name]
        cpu = [r["cpu_us"] for r in runs]
        ratios = [r["cpu_us"] / b["cpu_us"] for r, b in zip(runs, base, strict=True)]
        added = [r["cpu_us"] - b["cpu_us"] for r, b in zip(runs, base, strict=True)]
        ratio = statistics.median(ratios)
        sent = sum(r["sent"] for r in runs)

        def pooled(key: str, runs: list[dict[str, float]] = runs, sent: float = sent) -> float:
            # Clock ticks are 10 ms: one run's thread split is too coarse, all runs' is not.
            return sum(r[key] for r in runs) / sent * 1e6

        row = {
            "variant": v.name,
            "cpu_us_median": statistics.median(cpu),
            "cpu_us": cpu,
            "ratio_vs_base": ratio,
            "ratio_min_max": [min(ratios), max(ratios)],
            "added_us_median": statistics.median(added),
            "main_us_pooled": pooled("main_s"),
            "others_us_pooled": pooled("others_s"),
            "children_us_pooled": pooled("children_s")
            if any(r["children"] for r in runs)
            else None,
            "sent_median": statistics.median(r["sent"] for r in runs),
            "rps_median": statistics.median(r["sent"] / r["wall_s"] for r in runs),
            "target_pct": v.target_cpu_pct,
        }
        if v.target_cpu_pct is None:
            row["verdict"] = "" if v.name in (BARE, BASE) else "reported"
        else:
            low, high, _ = median_interval([(x - 1) * 100 for x in ratios])
            row["verdict"] = verdict(low, high, (ratio - 1) * 100, v.target_cpu_pct)
        kids = row["children_us_pooled"]
        pyspy = "-" if kids is None else f"{kids:.1f}"
        print(
            f"{v.name:<20} {row['cpu_us_median']:>10.0f} {min(cpu):>6.0f}..{max(cpu):<6.0f} "
            f"{ratio:>8.3f} {min(ratios):>6.3f}..{max(ratios):<6.3f} "
            f"{row['added_us_median']:>+7.1f} {row['main_us_pooled']:>8.1f} "
            f"{row['others_us_pooled']:>9.1f} {pyspy:>7}  {row['verdict']}"
        )
        rows.append(row)
    print(
        "(added: median of the per-round differences to base; loop thr: the process's first "
        "thread, other thr: the rest (the sampler's above all), both pooled over all rounds; "
        "py-spy: its own process, pooled, NOT in CPU us/req)"
    )
    return rows


def report_idle(readings: dict[str, CpuReading], seconds: float) -> dict[str, dict[str, float]]:
    print(f"\nidle, {seconds:g} s without load: CPU ms per s of wall clock (= 0.1 % of a core)")
    out = {}
    for name, r in readings.items():
        out[name] = {
            "server_ms_per_s": r.total_s / seconds * 1000,
            "others_ms_per_s": r.others_s / seconds * 1000,
            "children_ms_per_s": r.children_s / seconds * 1000,
        }
        kids = f"  py-spy {out[name]['children_ms_per_s']:.1f}" if r.children_s else ""
        print(
            f"  {name:<20} {out[name]['server_ms_per_s']:6.1f}"
            f"  (other threads {out[name]['others_ms_per_s']:.1f}){kids}"
        )
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=7, help="throughput rounds")
    parser.add_argument("--duration", type=int, default=5, help="seconds of wrk per run")
    parser.add_argument("--warmup", type=int, default=2, help="seconds of wrk before round 1")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--cpu-rounds", type=int, default=5, help="0: skip the CPU phase")
    parser.add_argument("--cpu-requests", type=int, default=10_000, help="requests per CPU run")
    parser.add_argument("--idle-seconds", type=float, default=30, help="0: skip the idle phase")
    parser.add_argument("--variants", default=",".join(DEFAULT_VARIANTS))
    parser.add_argument("--path", default="/")
    parser.add_argument("--no-pin", action="store_true")
    parser.add_argument("--json", type=Path, help="write every figure here")
    args = parser.parse_args()
    names = [n.strip() for n in args.variants.split(",") if n.strip()]
    unknown = sorted(set(names) - set(VARIANTS))
    if unknown:
        parser.error(f"unknown variants {unknown} (known: {', '.join(VARIANTS)})")
    for needed in (BARE, BASE):
        if needed not in names:
            names.insert(0 if needed == BARE else 1, needed)
    if args.rounds < 1 or args.duration < 1:
        parser.error("need one round and a duration of 1 s or more")
    if not ensure_wrk():
        return 1
    variants = [VARIANTS[n] for n in names]
    server_cpu, wrk_cpu = cpu_prefixes(not args.no_pin)
    print(
        f"wrk -t1 -c{args.connections} -d{args.duration}s GET {args.path}, {args.rounds} rounds; "
        f"CPU: {args.cpu_rounds} rounds of {args.cpu_requests} requests; {describe_stack()}; "
        f"{'servers on CPU 0, wrk on CPU 1' if server_cpu else 'not pinned'}; "
        f"load average {os.getloadavg()[0]:.2f} at start",
        flush=True,
    )
    report: dict[str, Any] = {
        "argv": sys.argv[1:],
        "stack": describe_stack(),
        "loadavg_start": os.getloadavg(),
    }
    runners: list[Runner] = []
    with (
        tempfile.TemporaryDirectory(prefix="asgi-perf-sampler-") as tmp,
        httpx.Client(timeout=120) as client,
    ):
        try:
            for v in variants:
                options = "" if v.options is None else json.dumps(v.options)
                server = start_server(
                    BARE if v.options is None else "asgi_perf",
                    options,
                    Path(tmp),
                    server_cpu,
                    name=v.name,
                )
                windowed = None if v.window is None else WindowedRuns(v.window, PREFIX, client, [])
                runners.append(Runner(v, server, windowed))
            wrk = Wrk(args.path, args.connections, 1, wrk_cpu)
            for runner in runners:
                wait_ready(runner.server, args.path)
                if runner.variant.options is not None:
                    # The first request starts the loop watchers; say they run.
                    get_json(client, runner.server, "/stats")
                if args.warmup > 0:
                    runner.wrk(wrk, args.warmup)
            for runner in runners:
                if runner.windowed is not None:
                    runner.windowed.answers.clear()

            rps = throughput_phase(runners, wrk, args.rounds, args.duration)
            report["throughput"] = report_throughput(rps, variants)
            report["telemetry_after_throughput"] = {
                r.variant.name: telemetry(client, r) for r in runners
            }
            report["windows_throughput"] = {
                r.variant.name: window_summary(r.windowed.answers)
                for r in runners
                if r.windowed is not None
            }
            print_telemetry(report["telemetry_after_throughput"], report["windows_throughput"])

            if args.cpu_rounds > 0:
                for runner in runners:
                    if runner.windowed is not None:
                        runner.windowed.answers.clear()
                counted = Wrk(
                    args.path,
                    args.connections,
                    1,
                    wrk_cpu,
                    wrk_script(Path(tmp), stop_after=args.cpu_requests, name="count"),
                )
                # Far longer than any server here needs; only a stuck one hits it.
                max_s = max(30, args.cpu_requests // 100)
                cpu = cpu_phase(runners, counted, args.cpu_rounds, max_s)
                report["cpu"] = report_cpu(cpu, variants)
                report["cpu_runs"] = cpu
                report["windows_cpu"] = {
                    r.variant.name: window_summary(r.windowed.answers)
                    for r in runners
                    if r.windowed is not None
                }
            if args.idle_seconds > 0:
                idle = idle_phase(runners, args.idle_seconds, client)
                report["idle"] = report_idle(idle, args.idle_seconds)
            report["telemetry_end"] = {r.variant.name: telemetry(client, r) for r in runners}
        finally:
            for runner in runners:
                stop(runner.server)
    report["loadavg_end"] = os.getloadavg()
    print(f"load average {os.getloadavg()[0]:.2f} at the end")
    if args.json:
        args.json.write_text(json.dumps(report, indent=1, default=str))
        print(f"figures written to {args.json}")
    return 0


def print_telemetry(tele: dict[str, dict[str, Any]], windows: dict[str, dict[str, Any]]) -> None:
    print("\nwhat asgi_perf reports about itself (after the throughput phase):")
    for name, t in tele.items():
        if not t:
            continue
        sampler = t.get("sampler") or {}
        parts = [f"requests {t.get('requests')}", f"internal errors {t.get('internal_errors')}"]
        if sampler:
            parts.append(
                "sampler "
                + ", ".join(
                    f"{k} {sampler.get(k)}"
                    for k in ("running", "effective_hz", "cpu_share", "ticks", "samples")
                )
            )
        if t.get("loop"):
            loop = t["loop"]
            parts.append(f"loop pings {loop.get('pings')}, lag p50 {loop['lag_ms'].get('p50')} ms")
        if t.get("profiled_requests"):
            p = t["profiled_requests"]
            parts.append(
                f"profiled {p.get('profiled')}, skipped_budget {p.get('skipped_budget')}, "
                f"hook_share {p.get('hook_share')}"
            )
        print(f"  {name}: " + "; ".join(parts))
    for name, w in windows.items():
        print(f"  {name} windows: " + ", ".join(f"{k} {v:g}" for k, v in w.items()))


if __name__ == "__main__":
    sys.exit(main())
