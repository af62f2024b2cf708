// The database panel: GET /db of an app that runs with db=True. Routes by
// DB time, the N+1s with the line of the app that runs them, the slow
// statements. Hidden while /stats says nothing of a database (capture off,
// or an older server); a 409 from /db says so in words.

import { clock, count, el, isNum, ms, setText, show, syncKeyed } from "./dom.js";

export const DB_OFF = "DB capture is off: start the app with db=True (or ASGI_PERF_DB=1)";

const perRequest = (total, requests) => (isNum(total) && isNum(requests) && requests > 0 ? total / requests : null);

/** Rows of a table body, or one row saying why there are none. */
function rows(body, items, columns, empty, cells) {
  const list = items.length ? items : [null];
  syncKeyed(
    body,
    list,
    (item) => (item === null ? `empty ${empty}` : JSON.stringify(item)),
    (item) =>
      item === null
        ? el("tr", { class: "empty" }, el("td", { colspan: columns, text: empty }))
        : el("tr", {}, ...cells(item)),
  );
}

const td = (text, cls) => el("td", { class: cls, text });
const sql = (statement) => el("td", { class: "sql" }, el("code", { text: statement ?? "" }));
const site = (where) => (where ? el("td", { class: "site" }, el("code", { text: where })) : td("—", "site muted"));

export class DBPanel {
  constructor(section) {
    this.section = section;
    this.summary = section.querySelector(".summary");
    this.off = section.querySelector(".off");
    this.body = section.querySelector(".db-body");
    this.routes = section.querySelector(".db-routes tbody");
    this.nPlusOne = section.querySelector(".db-n-plus-one tbody");
    this.nPlusOneTitle = section.querySelector(".db-n-plus-one-title");
    this.slow = section.querySelector(".db-slow tbody");
    this.slowTitle = section.querySelector(".db-slow-title");
  }

  /** snap.db: whether GET /db has anything to say; hides the panel when not. */
  wanted(db) {
    const on = Boolean(db && db.enabled !== false);
    if (!on) show(this.section, false);
    return on;
  }

  /** GET /db's answer, drawn. */
  update(answer) {
    show(this.section, true);
    show(this.off, false);
    show(this.body, true);
    const routes = answer.routes || [];
    const queries = routes.reduce((sum, r) => sum + (r.queries || 0), 0);
    const nPlusOne = answer.n_plus_one || [];
    const slow = answer.slow || [];
    const threshold = answer.n_plus_one_threshold ?? "?";
    setText(
      this.summary,
      `${count(queries)} queries on ${routes.length} routes; ${nPlusOne.length} N+1, ` +
        `${slow.length} slow statements kept`,
    );
    rows(this.routes, routes, 6, "no queries yet", (r) => [
      td(r.route, "route"),
      td(count(r.requests), "num"),
      td(isNum(perRequest(r.queries, r.requests)) ? perRequest(r.queries, r.requests).toFixed(1) : "—", "num"),
      td(ms(r.time_ms), "num"),
      td(ms(perRequest(r.time_ms, r.requests)), "num"),
      td(count(r.failed), r.failed ? "num bad" : "num"),
    ]);
    setText(this.nPlusOneTitle, `N+1 queries: one statement run ${threshold}+ times in a request`);
    rows(this.nPlusOne, nPlusOne, 5, "no N+1 found", (n) => [
      td(n.route, "route"),
      sql(n.statement),
      td(count(n.per_request), "num bad"),
      td(count(n.requests), "num"),
      site(n.call_site),
    ]);
    setText(this.slowTitle, `Slow statements: over ${ms(answer.slow_query_ms)}, newest first`);
    rows(this.slow, slow, 5, "no slow statement", (s) => [
      td(clock(s.at)),
      td(s.route, "route"),
      td(ms(s.duration_ms), "num"),
      sql(s.statement),
      site(s.call_site),
    ]);
  }

  /** GET /db answered 409: capture is off, say how to turn it on. */
  disabled() {
    show(this.section, true);
    show(this.body, false);
    setText(this.summary, "");
    setText(this.off, DB_OFF);
    show(this.off, true);
  }
}
