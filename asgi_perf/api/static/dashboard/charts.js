// Small SVG charts drawn by hand, updated in place: a refresh moves points,
// it never rebuilds the chart (no flash).

import { el, isNum, ms as fmt, setAttr, setText, svg } from "./dom.js";

/** A bounded series kept across refreshes (the server only has "now"). */
export class History {
  constructor(size = 150) {
    this.size = size;
    this.values = [];
  }

  push(value) {
    this.values.push(isNum(value) ? value : null);
    if (this.values.length > this.size) this.values.shift();
  }

  clear() {
    this.values.length = 0;
  }

  get last() {
    for (let i = this.values.length - 1; i >= 0; i -= 1) {
      if (this.values[i] !== null) return this.values[i];
    }
    return null;
  }
}

const MIN_SLOTS = 30;

/** A titled line with its latest value: the series scaled from 0 to its max. */
export class Sparkline {
  constructor(parent, { title, format, width = 260, height = 48, points = 150, stretch = false }) {
    this.format = format;
    this.stretch = stretch;
    this.width = width;
    this.height = height;
    this.points = points;
    this.value = el("span", { class: "spark-value", text: "—" });
    this.max = el("span", { class: "spark-max muted" });
    this.area = svg("path", { class: "spark-area" });
    this.line = svg("polyline", { class: "spark-line" });
    this.chart = svg(
      "svg",
      {
        class: "spark",
        viewBox: `0 0 ${width} ${height}`,
        preserveAspectRatio: "none",
        role: "img",
        "aria-label": title,
      },
      this.area,
      this.line,
    );
    this.root = el(
      "figure",
      { class: "sparkline" },
      el("figcaption", {}, el("span", { text: title }), this.value),
      this.chart,
      this.max,
    );
    parent.append(this.root);
  }

  update(values) {
    const known = values.filter(isNum);
    setText(this.value, known.length ? this.format(known[known.length - 1]) : "—");
    const top = known.length ? Math.max(...known) : 0;
    setText(this.max, top > 0 ? `max ${this.format(top)} over ${known.length * 2} s` : "");
    const h = this.height - 2;
    // A whole timeline fills the width; a live series enters from the right
    // at a fixed pace, on a scale of a minute at first, then of all it keeps.
    const slots = this.stretch
      ? Math.max(values.length, 2)
      : Math.min(Math.max(values.length, MIN_SLOTS), this.points);
    const step = this.width / (slots - 1);
    const offset = slots - values.length;
    const coords = [];
    values.forEach((v, i) => {
      if (!isNum(v)) return;
      const x = (offset + i) * step;
      const y = top > 0 ? 1 + h - (v / top) * h : this.height - 1;
      coords.push(`${x.toFixed(1)},${y.toFixed(1)}`);
    });
    setAttr(this.line, "points", coords.join(" "));
    if (coords.length > 1) {
      const first = coords[0].split(",")[0];
      const last = coords[coords.length - 1].split(",")[0];
      setAttr(this.area, "d", `M${first},${this.height} L${coords.join(" L")} L${last},${this.height} Z`);
    } else {
      setAttr(this.area, "d", "");
    }
  }
}

/**
 * The latency histogram of one route from its bucket counts.
 *
 * The server's buckets are 1 % wide (a log layout: bucket i holds values up
 * to gamma^i, reported as 2 gamma^i / (gamma + 1), see stats/histogram.py);
 * for the eye they are regrouped into at most BINS bars on the same log scale.
 */
const BINS = 48;

export function bucketValue(index, alpha) {
  const gamma = (1 + alpha) / (1 - alpha);
  return (2 * gamma ** index) / (gamma + 1);
}

export function regroup(hist, bins = BINS) {
  const buckets = hist.buckets || [];
  if (!buckets.length) return [];
  const alpha = hist.layout_alpha || 0.0095;
  const values = buckets.map(([i, n]) => [bucketValue(i, alpha), n]);
  const lo = Math.log(values[0][0]);
  const hi = Math.log(values[values.length - 1][0]);
  const width = Math.max((hi - lo) / bins, Math.log(1.02));
  const out = [];
  for (const [value, n] of values) {
    const k = Math.min(Math.floor((Math.log(value) - lo) / width), bins - 1);
    const last = out[out.length - 1];
    if (last && last.k === k) last.count += n;
    else out.push({ k, from: Math.exp(lo + k * width), to: Math.exp(lo + (k + 1) * width), count: n });
  }
  if (hist.zero) out[0].count += hist.zero; // values of 0 sit with the fastest
  return out;
}

export class HistogramChart {
  constructor(parent, { width = 560, height = 140 } = {}) {
    this.width = width;
    this.height = height;
    this.bars = svg("g", { class: "hist-bars" });
    this.marks = svg("g", { class: "hist-marks" });
    this.axis = svg("g", { class: "hist-axis" });
    this.chart = svg(
      "svg",
      { class: "histogram", viewBox: `0 0 ${width} ${height + 30}`, role: "img" },
      this.bars,
      this.marks,
      this.axis,
    );
    this.note = el("p", { class: "muted hist-note" });
    parent.append(this.chart, this.note);
  }

  /** hist: {buckets, layout_alpha, zero, count} in ns; lines: {p50: ms, p99: ms}. */
  update(hist, lines = {}) {
    const groups = hist ? regroup(hist) : [];
    if (!groups.length) {
      this.bars.replaceChildren();
      this.marks.replaceChildren();
      this.axis.replaceChildren();
      setText(this.note, "no requests yet");
      return;
    }
    const top = Math.max(...groups.map((g) => g.count));
    const k0 = groups[0].k;
    const span = groups[groups.length - 1].k - k0 + 1;
    const w = this.width / span;
    const h = this.height;
    const xOf = (ms) => {
      const from = groups[0].from / 1e6;
      const to = groups[groups.length - 1].to / 1e6;
      const t = (Math.log(ms) - Math.log(from)) / (Math.log(to) - Math.log(from) || 1);
      return Math.max(0, Math.min(1, t)) * this.width;
    };
    this.bars.replaceChildren(
      ...groups.map((g) => {
        const bh = Math.max((g.count / top) * h, 1);
        return svg(
          "rect",
          { x: ((g.k - k0) * w).toFixed(1), y: (h - bh).toFixed(1), width: Math.max(w - 1, 1).toFixed(1), height: bh.toFixed(1) },
          svg("title", { text: `${fmt(g.from / 1e6)} – ${fmt(g.to / 1e6)}: ${g.count} requests` }),
        );
      }),
    );
    this.marks.replaceChildren(
      ...Object.entries(lines)
        .filter(([, v]) => isNum(v) && v > 0)
        .map(([name, v]) => {
          const x = xOf(v).toFixed(1);
          return svg(
            "g",
            { class: `mark mark-${name}` },
            svg("line", { x1: x, x2: x, y1: 0, y2: h }),
            svg("text", { x, y: h + 26, "text-anchor": "middle", text: `${name} ${fmt(v)}` }),
          );
        }),
    );
    this.axis.replaceChildren(
      svg("line", { x1: 0, x2: this.width, y1: h + 0.5, y2: h + 0.5 }),
      svg("text", { x: 0, y: h + 13, text: fmt(groups[0].from / 1e6) }),
      svg("text", { x: this.width, y: h + 13, "text-anchor": "end", text: fmt(groups[groups.length - 1].to / 1e6) }),
    );
    setText(this.note, `${hist.count} requests since start or reset; log scale, tallest bar ${top}`);
  }
}
