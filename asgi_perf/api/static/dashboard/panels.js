// The smaller panels: traffic now, memory, the event loop, the workers.
// Each hides itself when its data is absent (feature off, older server).

import { Sparkline } from "./charts.js";
import { clock, count, duration, el, isNum, mb, ms, rate, setClass, setText, show, syncKeyed } from "./dom.js";
import { verdictChip } from "./routes.js";

/** The whole app's rate, and the p99 of its slowest route, over the last minutes. */
export class TrafficPanel {
  constructor(section) {
    const charts = section.querySelector(".charts");
    this.rps = new Sparkline(charts, { title: "requests/s, all routes (last 60 s)", format: rate });
    this.p99 = new Sparkline(charts, { title: "p99 of the slowest route (last 60 s)", format: ms });
  }

  update(history) {
    this.rps.update(history.rps.values);
    this.p99.update(history.p99.values);
  }
}

/** The numbers a refresh adds to the histories: totals over routes' recent windows. */
export function recentTotals(routes) {
  let rps = 0;
  let worst = null;
  for (const r of routes) {
    const recent = r.recent || {};
    if (isNum(recent.rps)) rps += recent.rps;
    const p = recent.count && recent.latency_ms ? recent.latency_ms.p99 : null;
    if (isNum(p) && (worst === null || p > worst)) worst = p;
  }
  return { rps, p99: worst };
}

export function summaryText(snap) {
  const parts = [
    snap.scope === "server" ? `server of ${(snap.workers || []).length} workers` : `pid ${snap.pid ?? "?"}`,
    `up ${duration(snap.uptime_s)}`,
    `${count(snap.requests)} requests since ${snap.since_reset_s < snap.uptime_s ? "reset" : "start"}`,
  ];
  if (snap.in_flight) parts.push(`${snap.in_flight} in flight`);
  if (snap.budgets) parts.push(snap.budgets.ok ? "budgets ok" : `${snap.budgets.failed} budgets broken`);
  if (snap.routes_dropped) parts.push(`${snap.routes_dropped} routes over max_routes`);
  if (snap.internal_errors) parts.push(`${snap.internal_errors} internal errors (see the log)`);
  return parts.join(" · ");
}

export class MemoryPanel {
  constructor(section) {
    this.section = section;
    this.now = section.querySelector(".now");
    this.reason = section.querySelector(".reason");
    this.budgets = section.querySelector(".budgets");
    this.chart = new Sparkline(section.querySelector(".charts"), {
      title: "RSS (the timeline)",
      format: mb,
      stretch: true, // the server's whole timeline, not a client-side history
    });
  }

  /** snap.process: read each refresh, no extra call. */
  update(process) {
    show(this.section, Boolean(process));
    if (!process) return;
    const slope = isNum(process.slope_mb_per_h) ? `, ${process.slope_mb_per_h.toFixed(1)} MB/h` : "";
    setText(
      this.now,
      `RSS ${mb(process.rss_mb)} (peak ${mb(process.peak_rss_mb)}), ${process.threads ?? "?"} threads, ` +
        `${process.fds ?? "?"} fds; trend ${process.trend || "—"}${slope}`,
    );
  }

  /** GET /memory: the trend in words and the process budgets. */
  report(report) {
    setText(this.reason, report.reason || "");
    syncKeyed(this.budgets, report.budgets || [], (v) => `${v.metric}${v.verdict}${v.limit}`, verdictChip);
  }

  timeline(answer) {
    const points = (answer && answer.points) || [];
    show(this.chart.root, points.length > 0);
    this.chart.update(points.map((p) => p.rss_mb));
    setText(this.chart.max, `${points.length} points, one every ${answer.interval_s ?? "?"} s`);
  }

  timelineOff() {
    show(this.chart.root, false);
  }
}

export class LoopPanel {
  constructor(section) {
    this.section = section;
    this.numbers = section.querySelector(".numbers");
    this.blocks = section.querySelector(".blocks");
    this.blockCount = -1;
  }

  /** snap.loop (null: the monitor is off). True when /loop should be read for stacks. */
  update(loop) {
    const on = Boolean(loop && loop.monitoring !== false);
    show(this.section, on);
    if (!on) return false;
    const lag = loop.lag_ms || {};
    setText(
      this.numbers,
      `scheduling lag p50 ${ms(lag.p50)}, p99 ${ms(lag.p99)}, max ${ms(lag.max)}; ` +
        `${loop.block_count ?? 0} blocks over ${ms(loop.threshold_ms)}, ${ms(loop.blocked_ms_total)} in all`,
    );
    if (!loop.block_count) {
      syncKeyed(this.blocks, [null], () => "none", () =>
        el("li", { class: "muted", text: "no blocks: nothing held the loop that long" }),
      );
    }
    const changed = loop.block_count !== this.blockCount;
    this.blockCount = loop.block_count;
    return changed && loop.block_count > 0;
  }

  /** GET /loop: the blocks with the line that blocked. */
  report(report) {
    const blocks = [...((report && report.blocks) || [])].sort((a, b) => (b.at || 0) - (a.at || 0)).slice(0, 3);
    syncKeyed(this.blocks, blocks, (b) => `${b.at}${b.duration_ms}`, (b) => {
      // The last frame is the line that blocked; the first route, the request running it.
      const stack = b.stack || [];
      const frame = stack[stack.length - 1];
      const where = frame ? ` — ${frame.function} (${frame.file}:${frame.line})` : "";
      const route = (b.routes || [])[0] || "outside any request";
      return el("li", {}, el("b", { text: ms(b.duration_ms) }), ` at ${clock(b.at)}, ${route}${where}`);
    });
  }
}

export class WorkersPanel {
  constructor(section) {
    this.section = section;
    this.body = section.querySelector("tbody");
  }

  update(workers) {
    const list = workers || [];
    show(this.section, list.length > 1);
    if (list.length < 2) return;
    syncKeyed(this.body, list, (w) => w.pid, (w) =>
      el("tr", {}, el("td", { text: w.pid }), el("td"), el("td", { class: "num" }), el("td", { class: "num" })),
    );
    list.forEach((w, i) => {
      const row = this.body.children[i];
      setClass(row, w.alive ? "" : "dead");
      setText(row.cells[1], w.alive ? "alive" : "gone");
      setText(row.cells[2], count(w.requests));
      setText(row.cells[3], isNum(w.last_flush_s) ? `${w.last_flush_s.toFixed(1)} s ago` : "—");
    });
  }
}
