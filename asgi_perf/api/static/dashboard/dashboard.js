// The dashboard: every 2 s one GET /stats (and the small calls its panels
// need), each panel updating its own DOM in place.

import { AuthNeeded, TOKEN_EXPECTED, getJSON, postJSON, q, setToken, token } from "./api.js";
import { History } from "./charts.js";
import { DBPanel } from "./db.js";
import { clock, setText, show } from "./dom.js";
import { LoopPanel, MemoryPanel, TrafficPanel, WorkersPanel, recentTotals, summaryText } from "./panels.js";
import { FlameImage, ProfileList, WindowControl, describe } from "./profiles.js";
import { RouteDetail, RouteTable, verdictsByRoute } from "./routes.js";

const REFRESH_MS = 2000;
// What costs the server a snapshot of its own is read less often than /stats.
const MEMORY_EVERY = 15;
const HISTOGRAM_EVERY = 5;
const BUDGETS_MAX_AGE_MS = 30000;
// GET /db again once new queries came in, and not more often than this.
const DB_MIN_AGE_MS = 4000;

const $ = (id) => document.getElementById(id);

const state = {
  tick: 0,
  busy: false,
  again: false,
  waitingForToken: false,
  timer: null,
  drawn: false,
  selected: null,
  verdicts: new Map(),
  verdictKey: null,
  budgetsAt: 0,
  total: { rps: new History(), p99: new History() },
  perRoute: new Map(),
  routes: new Map(), // the last snapshot's routes by name
  timelineOn: false,
  timelinePoints: null,
  dbQueries: null, // snap.db.queries when /db was last read
  dbAt: 0,
};

const table = new RouteTable($("routes-table"), $("routes-empty"), select);
const detail = new RouteDetail($("route"), () => select(null));
const traffic = new TrafficPanel($("traffic"));
const memory = new MemoryPanel($("memory"));
const loop = new LoopPanel($("loop"));
const workers = new WorkersPanel($("workers"));
const database = new DBPanel($("db"));
const viewer = new FlameImage($("viewer-body"));
const profiles = new ProfileList($("profiles-table"), $("profiles-summary"), openFlame);
const windows = new WindowControl(
  { input: $("window-seconds"), start: $("window-start"), stop: $("window-stop"), state: $("window-state") },
  openFlame,
  (err) => failed(err),
);

function openFlame(meta) {
  show($("viewer"), true);
  setText($("viewer-title"), `Flame graph: ${describe(meta)}`);
  viewer.show(meta, describe(meta)).catch(failed);
  $("viewer").scrollIntoView({ block: "start" });
}

function select(route) {
  state.selected = route === state.selected ? null : route;
  table.select(state.selected);
  if (!state.selected) {
    detail.close();
    return;
  }
  detail.open(state.selected);
  const entry = state.routes.get(state.selected);
  detail.update(entry, state.perRoute.get(state.selected), state.verdicts.get(state.selected));
  loadRoute(state.selected).catch(failed);
}

/** The selected route's histogram and profiles, now rather than at the next tick. */
async function loadRoute(route) {
  const [snap, kept] = await Promise.all([
    optional(getJSON("/stats?histograms=1")),
    optional(getJSON(`/profiles?route=${q(route)}&limit=100`)),
  ]);
  if (route !== state.selected) return;
  if (snap) guard("histogram", () => detail.setHistogram((snap.routes || []).find((r) => r.route === route)));
  await detail.setProfiles(kept, openFlame);
}

/** Panels that are optional take their data from here: null when absent or refused. */
async function optional(promise) {
  try {
    return await promise;
  } catch (err) {
    if (err instanceof AuthNeeded) throw err;
    return null;
  }
}

function guard(name, draw) {
  try {
    return draw();
  } catch (err) {
    // One panel's surprise (an older server's answer) must not stop the rest.
    setText($("status"), `${name}: could not draw (${err.message})`);
    return null;
  }
}

function record(routes) {
  const totals = recentTotals(routes);
  state.total.rps.push(totals.rps);
  state.total.p99.push(totals.p99);
  for (const r of routes) {
    let h = state.perRoute.get(r.route);
    if (!h) {
      h = { rps: new History(), p99: new History() };
      state.perRoute.set(r.route, h);
    }
    const recent = r.recent || {};
    h.rps.push(recent.rps ?? 0);
    h.p99.push(recent.count ? recent.latency_ms && recent.latency_ms.p99 : null);
  }
}

/** GET /budgets when a verdict changed (or now and then): true when it was read. */
async function budgets(snap, routes) {
  if (!snap.budgets) return false; // no budgets configured
  const key = routes.map((r) => `${r.route}=${r.budget}`).join("\n");
  if (key === state.verdictKey && Date.now() - state.budgetsAt < BUDGETS_MAX_AGE_MS) return false;
  const answer = await optional(getJSON("/budgets"));
  if (!answer) return false;
  state.verdicts = verdictsByRoute(answer);
  state.verdictKey = key;
  state.budgetsAt = Date.now();
  return true;
}

async function refresh() {
  if (state.busy) {
    state.again = true;
    return;
  }
  if (state.waitingForToken) return;
  state.busy = true;
  clearTimeout(state.timer);
  const started = performance.now();
  try {
    const tick = state.tick++;
    // Both asked at once; the table is drawn as soon as /stats is in.
    const listed = optional(getJSON("/profiles?limit=50"));
    listed.catch(() => {}); // awaited below; a refusal of /stats must not leave it unhandled
    const snap = await getJSON("/stats");
    draw(snap);
    if (!state.drawn) {
      state.drawn = true;
      performance.mark("asgi-perf:first-data");
    }
    const list = await listed;
    guard("profiles", () => profiles.update(list));
    // Then what needs a call of its own: each panel fills in when it arrives.
    await details(snap, tick);
    document.body.dataset.ready = "1";
    setText($("status"), `updated ${clock(Date.now() / 1000)} (${Math.round(performance.now() - started)} ms)`);
    $("status").className = "status";
  } catch (err) {
    failed(err);
  } finally {
    state.busy = false;
    schedule(started);
  }
}

/** Everything one GET /stats tells, drawn at once. */
function draw(snap) {
  const routes = snap.routes || [];
  record(routes);
  state.routes = new Map(routes.map((r) => [r.route, r]));
  setText($("summary"), summaryText(snap));
  guard("routes", () => table.update(routes, state.verdicts));
  guard("traffic", () => traffic.update(state.total));
  const route = state.selected;
  if (route) {
    const entry = routes.find((r) => r.route === route);
    guard("route", () => detail.update(entry, state.perRoute.get(route), state.verdicts.get(route)));
  }
  guard("workers", () => workers.update(snap.workers));
  guard("windows", () => windows.sync(snap.profiling && snap.profiling.windows));
  guard("memory", () => memory.update(snap.process));
}

async function details(snap, tick) {
  const routes = snap.routes || [];
  if (await budgets(snap, routes)) {
    guard("routes", () => table.update(routes, state.verdicts));
    const route = state.selected;
    if (route) {
      const entry = routes.find((r) => r.route === route);
      guard("route", () => detail.update(entry, state.perRoute.get(route), state.verdicts.get(route)));
    }
  }
  if (state.selected && tick % HISTOGRAM_EVERY === 0) await loadRoute(state.selected);
  if (guard("loop", () => loop.update(snap.loop))) {
    const report = await optional(getJSON("/loop"));
    if (report) guard("loop", () => loop.report(report));
  }
  if (snap.process) await refreshMemory(snap, tick);
  if (guard("db", () => database.wanted(snap.db))) await refreshDB(snap.db);
}

/** GET /db when queries came in since it was last read (the first time, at once). */
async function refreshDB(db) {
  const fresh = state.dbQueries === null;
  if (!fresh && (db.queries === state.dbQueries || Date.now() - state.dbAt < DB_MIN_AGE_MS)) return;
  try {
    const answer = await getJSON("/db");
    state.dbQueries = db.queries;
    state.dbAt = Date.now();
    guard("db", () => database.update(answer));
  } catch (err) {
    if (err instanceof AuthNeeded) throw err;
    if (err.status !== 409) return; // asked again next time
    state.dbQueries = db.queries;
    state.dbAt = Date.now();
    database.disabled();
  }
}

/**
 * The memory panel's calls. GET /memory costs the server a snapshot of its
 * own, so it is read now and then for its words (the trend's reason, the
 * process budgets); the timeline, cheap, whenever the snapshot says it grew.
 */
async function refreshMemory(snap, tick) {
  const process = snap.process;
  if (tick % MEMORY_EVERY === 0) {
    const report = await optional(getJSON("/memory"));
    if (report) {
      guard("memory", () => memory.report(report));
      state.timelineOn = Boolean(report.timeline);
    }
  }
  // trend is null exactly when the timeline is off (memory_interval_s=0).
  const on = process.trend === undefined ? state.timelineOn : process.trend !== null;
  if (!on) {
    memory.timelineOff();
    return;
  }
  const points = process.trend_points;
  if (points === state.timelinePoints && tick % MEMORY_EVERY !== 0) return;
  const timeline = await optional(getJSON("/memory/timeline?format=json"));
  if (timeline) {
    state.timelinePoints = points;
    guard("memory", () => memory.timeline(timeline));
  } else {
    memory.timelineOff();
  }
}

function schedule(started) {
  clearTimeout(state.timer);
  if (state.waitingForToken || document.hidden) return; // visibilitychange restarts it
  if (state.again) {
    state.again = false;
    state.timer = setTimeout(refresh, 0);
    return;
  }
  const wait = Math.max(REFRESH_MS - (performance.now() - started), 200);
  state.timer = setTimeout(refresh, wait);
}

function failed(err) {
  if (err instanceof AuthNeeded) {
    setToken(null);
    askToken(err.message);
    return;
  }
  setText($("status"), err.message);
  $("status").className = "status error";
}

function askToken(message) {
  state.waitingForToken = true;
  clearTimeout(state.timer);
  setText($("token-message"), message);
  show($("token-box"), true);
  show($("forget-token"), false);
  $("token-input").focus();
}

$("token-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const value = $("token-input").value.trim();
  if (!value) return;
  setToken(value);
  $("token-input").value = "";
  show($("token-box"), false);
  show($("forget-token"), true);
  state.waitingForToken = false;
  refresh();
});

$("forget-token").addEventListener("click", () => {
  setToken(null);
  askToken("token forgotten: enter it again to go on");
});

$("reset").addEventListener("click", async () => {
  if (!window.confirm("Reset every number, histogram and memory timeline of this server?")) return;
  try {
    const cleared = await postJSON("/reset");
    state.total.rps.clear();
    state.total.p99.clear();
    state.perRoute.clear();
    state.verdictKey = null;
    state.dbQueries = null;
    setText($("window-state"), `reset: ${cleared.requests ?? 0} requests cleared`);
    refresh();
  } catch (err) {
    failed(err);
  }
});

document.addEventListener("visibilitychange", () => {
  if (!document.hidden && !state.waitingForToken) refresh();
});

if (TOKEN_EXPECTED && !token()) askToken("this server needs its asgi_perf token");
else {
  show($("forget-token"), Boolean(token()));
  refresh();
}
