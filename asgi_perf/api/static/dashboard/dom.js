// DOM helpers and number formats. Text goes in with textContent only, never
// innerHTML: route names and tags come from the measured app.

const SVG_NS = "http://www.w3.org/2000/svg";

/** An element with attributes ({text, class, on*: handler, other: attribute}) and children. */
export function el(tag, attrs = {}, ...children) {
  return fill(document.createElement(tag), attrs, children);
}

/** The same, in the SVG namespace. */
export function svg(tag, attrs = {}, ...children) {
  return fill(document.createElementNS(SVG_NS, tag), attrs, children);
}

function fill(node, attrs, children) {
  for (const [name, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (name === "text") node.textContent = String(value);
    else if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else node.setAttribute(name, value === true ? "" : String(value));
  }
  for (const child of children) {
    if (child !== null && child !== undefined) {
      node.append(child instanceof Node ? child : String(child));
    }
  }
  return node;
}

/** Set text only when it changed: no layout work, no flash, for unchanged cells. */
export function setText(node, text) {
  const value = String(text);
  if (node.textContent !== value) node.textContent = value;
}

export function setAttr(node, name, value) {
  const text = String(value);
  if (node.getAttribute(name) !== text) node.setAttribute(name, text);
}

export function setClass(node, name) {
  if (node.className !== name) node.className = name;
}

export function show(node, visible) {
  if (node.hidden === visible) node.hidden = !visible;
}

/**
 * Make parent's children one node per item, in order, reusing the node kept
 * for each key (data-key): a refresh adds what is new, drops what is gone and
 * leaves the rest alone, so nothing is redrawn that did not change.
 */
export function syncKeyed(parent, items, keyOf, build) {
  const old = new Map();
  for (const child of parent.children) old.set(child.dataset.key, child);
  const nodes = items.map((item) => {
    const key = String(keyOf(item));
    let node = old.get(key);
    if (!node) {
      node = build(item);
      node.dataset.key = key;
    }
    return node;
  });
  const kept = new Set(nodes);
  for (const child of [...parent.children]) if (!kept.has(child)) child.remove();
  if (nodes.some((node, i) => parent.children[i] !== node)) parent.append(...nodes);
}

export const isNum = (v) => typeof v === "number" && Number.isFinite(v);

/** Milliseconds as people read them: three significant digits, µs below 1 ms, s from 1 s. */
export function ms(v) {
  if (!isNum(v)) return "—";
  if (v === 0) return "0";
  if (v < 1) return `${Math.round(v * 1000)} µs`;
  if (v < 10) return `${v.toFixed(2)} ms`;
  if (v < 100) return `${v.toFixed(1)} ms`;
  if (v < 1000) return `${v.toFixed(0)} ms`;
  return `${(v / 1000).toFixed(2)} s`;
}

/** A limit as it was written: 200 ms, 1 s, 0.5 ms (no padding digits). */
function limitMs(v) {
  return v >= 1000 ? `${+(v / 1000).toPrecision(4)} s` : `${+v.toPrecision(4)} ms`;
}

export function mb(v) {
  if (!isNum(v)) return "—";
  if (Math.abs(v) < 1) return `${(v * 1024).toFixed(0)} KB`;
  return `${v.toFixed(1)} MB`;
}

export function count(v) {
  if (!isNum(v)) return "—";
  if (v >= 1e6) return `${(v / 1e6).toFixed(1)}M`;
  if (v >= 1e4) return `${(v / 1e3).toFixed(1)}k`;
  return String(Math.round(v));
}

export function rate(v) {
  if (!isNum(v)) return "—";
  return v >= 100 ? v.toFixed(0) : v.toFixed(1);
}

export function duration(seconds) {
  if (!isNum(seconds)) return "—";
  if (seconds < 60) return `${seconds.toFixed(0)} s`;
  if (seconds < 3600) return `${Math.floor(seconds / 60)} min ${Math.round(seconds % 60)} s`;
  return `${Math.floor(seconds / 3600)} h ${Math.round((seconds % 3600) / 60)} min`;
}

/** A Unix timestamp as a local clock time. */
export function clock(ts) {
  if (!isNum(ts)) return "—";
  return new Date(ts * 1000).toLocaleTimeString([], { hour12: false });
}

/** What a budget metric's name means, for a chip: "p99_ms" -> "p99". */
export function metricLabel(metric) {
  const names = {
    max_ms: "max",
    max_mb: "memory",
    error_rate: "errors",
    max_rss_mb: "RSS",
    max_growth_mb_per_h: "growth",
    max_queries: "queries",
    p99_db_ms: "DB p99",
  };
  return names[metric] || metric.replace(/_ms$/, "");
}

/** A budget limit in its unit. */
export function limitText(metric, value) {
  if (!isNum(value)) return "—";
  if (metric === "error_rate") return `${+(value * 100).toPrecision(3)} %`;
  if (metric === "max_growth_mb_per_h") return `${value} MB/h`;
  if (metric === "max_queries") return `${value}`;
  if (metric.endsWith("_mb")) return `${+value.toPrecision(4)} MB`;
  return limitMs(value);
}
