// The route table (sorted by p99, budgets in colour) and one route's detail.

import { HistogramChart, Sparkline } from "./charts.js";
import {
  count,
  el,
  isNum,
  limitText,
  mb,
  metricLabel,
  ms,
  rate,
  syncKeyed,
  setAttr,
  setClass,
  setText,
  show,
} from "./dom.js";
import { FlameImage, describe, profileLinks } from "./profiles.js";

const p99 = (r) => (r.latency_ms && r.latency_ms.p99) || 0;

/** GET /budgets' verdicts by route (the process's own are left to the memory panel). */
export function verdictsByRoute(budgets) {
  const out = new Map();
  for (const v of (budgets && budgets.verdicts) || []) {
    if (!out.has(v.route)) out.set(v.route, []);
    out.get(v.route).push(v);
  }
  return out;
}

/** One chip: the verdict in its colour, with the limit it was held to. */
export function verdictChip(v) {
  const label = `${metricLabel(v.metric)} ≤ ${limitText(v.metric, v.limit)}`;
  const measured = isNum(v.measured) ? `measured ${limitText(v.metric, v.measured)}` : "not measured";
  return el(
    "span",
    {
      class: `verdict verdict-${v.verdict}`,
      "data-verdict": v.verdict,
      title: v.note || `${measured}, ${v.samples} samples (budget ${v.pattern || v.route})`,
    },
    el("b", { text: v.verdict }),
    ` ${label}`,
    // A note (DB capture off) says more than the sample count.
    v.note ? el("span", { class: "samples note", text: " (no DB numbers)" })
      : v.verdict === "insufficient" ? el("span", { class: "samples", text: ` (${v.samples} samples)` }) : null,
  );
}

const chipKey = (v) => `${v.metric} ${v.verdict} ${v.limit} ${v.verdict === "insufficient" ? v.samples : ""} ${v.note || ""}`;

const CELLS = ["count", "rps", "p50", "p90", "p99", "max", "errors", "memory"];

export class RouteTable {
  constructor(table, empty, onSelect) {
    this.body = table.tBodies[0];
    this.empty = empty;
    this.onSelect = onSelect;
    this.rows = new Map();
    this.selected = null;
  }

  row(route) {
    let row = this.rows.get(route);
    if (row) return row;
    const cells = {};
    const name = el("button", { type: "button", class: "link route", text: route });
    const tr = el("tr", { "data-route": route, onclick: () => this.onSelect(route) }, el("td", {}, name));
    for (const key of CELLS) {
      cells[key] = el("td", { class: `num c-${key}` });
      tr.append(cells[key]);
    }
    cells.budget = el("td", { class: "budget" });
    tr.append(cells.budget);
    row = { tr, cells };
    this.rows.set(route, row);
    return row;
  }

  update(routes, verdicts) {
    const sorted = [...routes].sort((a, b) => p99(b) - p99(a) || a.route.localeCompare(b.route));
    show(this.empty, sorted.length === 0);
    const seen = new Set();
    for (const r of sorted) {
      seen.add(r.route);
      this.fill(this.row(r.route), r, verdicts.get(r.route));
    }
    for (const [route, row] of this.rows) {
      if (!seen.has(route)) {
        row.tr.remove();
        this.rows.delete(route);
      }
    }
    // Move rows only when the order changed: moved nodes keep their state.
    const trs = sorted.map((r) => this.rows.get(r.route).tr);
    if (trs.some((tr, i) => this.body.children[i] !== tr)) this.body.append(...trs);
  }

  fill(row, r, verdicts) {
    const c = row.cells;
    const lat = r.latency_ms || {};
    const recent = r.recent || {};
    setText(c.count, count(r.count));
    setText(c.rps, rate(recent.rps));
    setText(c.p50, ms(lat.p50));
    setText(c.p90, ms(lat.p90));
    setText(c.p99, ms(lat.p99));
    setText(c.max, ms(lat.max));
    setText(c.errors, count(r.errors ?? 0));
    setClass(c.errors, r.errors ? "num c-errors bad" : "num c-errors");
    const mem = r.memory_mb || {};
    setText(c.memory, mem.samples ? mb(mem.max) : "—");
    setAttr(c.memory, "title", mem.samples ? `largest growth of ${mem.samples} measured requests (${mem.method})` : "not measured yet");
    setClass(row.tr, r.route === this.selected ? "selected" : "");
    const chips = verdicts && verdicts.length ? verdicts : r.budget ? [{ metric: "budget", verdict: r.budget, samples: r.count }] : [];
    syncKeyed(c.budget, chips, chipKey, (v) => (v.metric === "budget" ? bare(v.verdict) : verdictChip(v)));
  }

  select(route) {
    this.selected = route;
    for (const [name, row] of this.rows) setClass(row.tr, name === route ? "selected" : "");
  }
}

/** A verdict without its limits (an older server, or /budgets not read yet). */
function bare(verdict) {
  return el("span", { class: `verdict verdict-${verdict}`, "data-verdict": verdict }, el("b", { text: verdict }));
}

/** routes[].db (with db=True) in words: queries and DB time per request, N+1s. */
function dbText(db) {
  if (!db || !db.queries || !db.time_ms) return "";
  const q = db.queries;
  const share = isNum(db.share) ? `, ${(db.share * 100).toFixed(1)} % of the time` : "";
  const n1 = db.n_plus_one ? `; N+1 in ${count(db.n_plus_one)} requests` : "";
  return `; DB ${isNum(q.mean) ? q.mean.toFixed(1) : "—"} queries/request (max ${q.max ?? "—"}), ` +
    `p99 ${ms(db.time_ms.p99)} in the database${share}${n1}`;
}

/** The selected route: numbers, budgets, histories, histogram, slowest profiles. */
export class RouteDetail {
  constructor(section, onClose) {
    this.section = section;
    this.title = section.querySelector("h2");
    this.summary = section.querySelector(".summary");
    this.budgets = section.querySelector(".budgets");
    const charts = section.querySelector(".route-charts");
    this.rps = new Sparkline(charts, { title: "requests/s (last 60 s)", format: rate });
    this.p99 = new Sparkline(charts, { title: "p99 (last 60 s)", format: ms });
    this.histogram = new HistogramChart(section.querySelector(".route-histogram"));
    this.slowest = section.querySelector(".slowest");
    this.flame = new FlameImage(section.querySelector(".route-flame"));
    section.querySelector(".close").addEventListener("click", onClose);
    this.route = null;
  }

  open(route) {
    this.route = route;
    setText(this.title, route);
    this.flame.clear("");
    this.histogram.update(null);
    setText(this.histogram.note, "loading the histogram…");
    syncKeyed(this.slowest, [], () => "", () => null);
    show(this.section, true);
  }

  close() {
    this.route = null;
    show(this.section, false);
  }

  update(r, history, verdicts) {
    if (history) {
      this.rps.update(history.rps.values);
      this.p99.update(history.p99.values);
    }
    if (!r) {
      setText(this.summary, "no requests since the last reset");
      return;
    }
    const lat = r.latency_ms || {};
    const ttfb = r.ttfb_ms || {};
    const status = r.status || {};
    const classes = Object.entries(status)
      .filter(([, n]) => n)
      .map(([k, n]) => `${k}: ${n}`)
      .join(", ");
    setText(
      this.summary,
      `${count(r.count)} requests (${classes || "none"}), ${r.in_flight ?? 0} in flight; ` +
        `p50 ${ms(lat.p50)}, p99 ${ms(lat.p99)}, max ${ms(lat.max)}, mean ${ms(lat.mean)}; ` +
        `first byte p99 ${ms(ttfb.p99)}` +
        (r.loop_blocks ? `; blocked the event loop ${r.loop_blocks}×` : "") +
        dbText(r.db),
    );
    syncKeyed(this.budgets, verdicts || [], chipKey, verdictChip);
  }

  setHistogram(r) {
    const hist = r && r.histograms && r.histograms.latency_ns;
    if (!r || !hist) {
      this.histogram.update(null);
      if (r && !r.histograms) setText(this.histogram.note, "this server sends no histograms");
      return;
    }
    const lat = r.latency_ms || {};
    this.histogram.update(hist, { p50: lat.p50, p99: lat.p99 });
  }

  /** The route's kept profiles, slowest first, and the slowest one's flame graph. */
  async setProfiles(answer, onFlame) {
    const slowest = [...((answer && answer.profiles) || [])]
      .filter((m) => isNum(m.duration_ms))
      .sort((a, b) => b.duration_ms - a.duration_ms)
      .slice(0, 5);
    if (!slowest.length) {
      syncKeyed(this.slowest, [null], () => "empty", () =>
        el("li", { class: "muted", text: "no profiles of this route yet — send X-Perf-Profile: 1 or set sample_rate" }),
      );
      this.flame.clear("");
      return;
    }
    syncKeyed(this.slowest, slowest, (m) => m.id, (m) =>
      el("li", { "data-profile": m.id }, el("span", { text: `${ms(m.duration_ms)} ${m.kind} ` }), profileLinks(m, onFlame)),
    );
    await this.flame.show(slowest[0], `the slowest profile, ${describe(slowest[0])}`);
  }
}
