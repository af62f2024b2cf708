// Profiles: the list with its links, a flame graph shown in place, and the
// "profile N seconds" window.

import { AuthNeeded, BASE, HttpError, download, getBlob, getJSON, postJSON, q, token } from "./api.js";
import { clock, el, ms, syncKeyed, setText, show } from "./dom.js";

/** pyinstrument's own HTML viewer exists only for pyinstrument profiles. */
const hasHtml = (meta) => meta.engine === "pyinstrument";

/**
 * The links of one profile. Without a token they open in a new tab (the
 * profile pages are served inline); with one, a tab could not send it, so
 * the files come down through fetch() instead and the viewers are left out.
 */
export function profileLinks(meta, onFlame) {
  const id = meta.id;
  const path = `/profiles/${q(id)}`;
  const items = [];
  if (onFlame) {
    items.push(button("flame graph", () => onFlame(meta), "view"));
  }
  if (token()) {
    const fetchTo = (label, ext) => {
      const fetcher = button(label, () => {
        download(`${path}${ext}`, `${id}${ext}`).catch((err) => {
          fetcher.title = err.message; // failed: the reason on hover, no alert
          fetcher.classList.add("failed");
        });
      }, "download");
      return fetcher;
    };
    items.push(fetchTo(".prof", ".prof"), fetchTo("speedscope.json", ".speedscope.json"));
    if (hasHtml(meta)) items.push(fetchTo(".html", ".html"));
  } else {
    const tab = (label, href) =>
      el("a", { href: BASE + href, target: "_blank", rel: "noopener", text: label, class: "open" });
    items.push(tab("snakeviz", `${path}/snakeviz`), tab("speedscope", `${path}/speedscope`));
    if (hasHtml(meta)) items.push(tab("html", `${path}.html`));
    items.push(el("a", { href: `${BASE}${path}.prof?download=1`, download: `${id}.prof`, text: ".prof" }));
  }
  return el("span", { class: "links" }, ...items);
}

function button(text, onclick, kind) {
  return el("button", { type: "button", class: `link ${kind}`, text, onclick });
}

/** A profile's flame graph as an image: fetched with the token, shown from a blob. */
export class FlameImage {
  constructor(parent) {
    this.note = el("p", { class: "muted flame-note" });
    this.img = el("img", { class: "flame", alt: "flame graph" });
    this.open = el("a", { class: "open", target: "_blank", rel: "noopener", text: "open interactive ↗" });
    this.img.hidden = true;
    this.open.hidden = true;
    this.id = null;
    this.url = null;
    parent.append(this.note, this.open, this.img);
  }

  async show(meta, label) {
    if (meta.id === this.id) return;
    const id = meta.id;
    this.id = id;
    setText(this.note, `loading the flame graph of ${label}…`);
    try {
      const blob = await getBlob(`/profiles/${q(id)}.svg`);
      if (this.id !== id) return; // another one was asked for meanwhile
      const url = URL.createObjectURL(blob);
      this.img.src = url;
      await this.img.decode().catch(() => {});
      if (this.url) URL.revokeObjectURL(this.url);
      this.url = url;
      this.img.alt = `flame graph of ${label}`;
      this.img.dataset.profile = id;
      show(this.img, true);
      setText(this.note, label);
      // The SVG's own script (hover, zoom, search) runs in a tab of its own,
      // not in an image; that tab cannot send a token, hence no link then.
      this.open.href = `${BASE}/profiles/${q(id)}.svg`;
      show(this.open, !token());
    } catch (err) {
      if (this.id !== id) return;
      this.id = null;
      show(this.img, false);
      show(this.open, false);
      setText(this.note, `no flame graph for ${label}: ${err.message}`);
      if (err instanceof AuthNeeded) throw err;
    }
  }

  clear(message = "") {
    this.id = null;
    show(this.img, false);
    show(this.open, false);
    this.img.removeAttribute("src");
    if (this.url) URL.revokeObjectURL(this.url);
    this.url = null;
    setText(this.note, message);
  }
}

export function describe(meta) {
  const what = meta.kind === "request" ? meta.route : `${meta.kind} ${meta.route || ""}`.trim();
  return `${what} (${ms(meta.duration_ms)}, ${meta.engine})`;
}

const EMPTY =
  "no profiles yet — send X-Perf-Profile: 1 with a request, set sample_rate, or profile a window with the button above";

/** GET /profiles as a table; rebuilt only when the list of ids changes. */
export class ProfileList {
  constructor(table, summary, onFlame) {
    this.body = table.tBodies[0];
    this.summary = summary;
    this.onFlame = onFlame;
  }

  update(answer) {
    const profiles = (answer && answer.profiles) || [];
    const store = (answer && answer.store) || {};
    setText(
      this.summary,
      `${profiles.length} shown, ${store.count ?? "?"} kept` +
        (store.evicted ? `, ${store.evicted} evicted` : ""),
    );
    if (!profiles.length) {
      syncKeyed(this.body, [null], () => "empty", () =>
        el("tr", { class: "empty" }, el("td", { colspan: 8, text: EMPTY })),
      );
      return;
    }
    syncKeyed(this.body, profiles, (m) => `${m.id}${token() ? "t" : ""}`, (m) =>
      el(
        "tr",
        { "data-profile": m.id },
        el("td", { text: clock(m.created ?? m.start) }),
        el("td", { class: "route", text: m.route || "—" }),
        el("td", { text: m.kind || "—" }),
        el("td", { class: "num", text: ms(m.duration_ms) }),
        el("td", { text: m.engine || "—" }),
        el("td", { text: m.tag || "" }),
        el("td", { class: "num", text: m.status ?? "" }),
        el("td", {}, profileLinks(m, this.onFlame)),
      ),
    );
  }
}

/**
 * "Profile N seconds": POST /windows, a countdown, then POST /windows/{id}/stop
 * just after its end. The server ends the window itself at its time limit
 * (with several workers, it collects every worker's part then); a stop after
 * that answers with the stored profile, so the page does not poll for it.
 */
const END_MARGIN_MS = 750;

export class WindowControl {
  constructor({ input, start, stop, state }, onProfile, onError) {
    Object.assign(this, { input, startButton: start, stopButton: stop, state, onProfile, onError });
    this.running = null; // {id, deadline}
    this.showsOther = false;
    start.addEventListener("click", () => this.start().catch(onError));
    stop.addEventListener("click", () => this.finish().catch(onError));
    input.addEventListener("input", () => this.label());
    this.label();
  }

  label() {
    setText(this.startButton, `Profile ${this.seconds() || "N"} s`);
  }

  seconds() {
    const n = Number(this.input.value);
    return Number.isInteger(n) && n >= 1 ? n : null;
  }

  /** The snapshot's view: another client's window shows too, and the limit. */
  sync(windows) {
    if (!windows) return;
    if (windows.max_window_seconds) this.input.max = windows.max_window_seconds;
    if (this.running) return;
    const other = windows.running;
    this.startButton.disabled = Boolean(other);
    if (other) {
      setText(this.state, `a window (${other.engine}) runs until ${clock(other.ends_at)}`);
      this.showsOther = true;
    } else if (this.showsOther) {
      setText(this.state, "");
      this.showsOther = false;
    }
  }

  async start() {
    const seconds = this.seconds();
    if (!seconds) {
      setText(this.state, "give a whole number of seconds");
      return;
    }
    this.startButton.disabled = true;
    try {
      const started = await postJSON(`/windows?seconds=${seconds}`);
      this.running = { id: started.id, deadline: Date.now() + seconds * 1000 };
      show(this.stopButton, true);
      this.tick();
    } catch (err) {
      this.startButton.disabled = false;
      setText(this.state, `could not start: ${err.message}`);
      if (err instanceof AuthNeeded) throw err;
    }
  }

  tick() {
    const run = this.running;
    if (!run) return;
    const left = Math.ceil((run.deadline - Date.now()) / 1000);
    if (Date.now() > run.deadline + END_MARGIN_MS) {
      this.finish().catch(this.onError);
      return;
    }
    setText(this.state, left > 0 ? `profiling… ${left} s left` : "collecting the profile…");
    this.timer = setTimeout(() => this.tick(), 250);
  }

  async finish() {
    const run = this.running;
    if (!run) return;
    this.running = null;
    clearTimeout(this.timer);
    show(this.stopButton, false);
    setText(this.state, "collecting the profile…");
    try {
      const meta = await this.stop(run.id);
      if (meta.error) throw new HttpError(200, meta.error, meta);
      setText(this.state, `done: ${describe(meta)}`);
      this.onProfile(meta);
    } catch (err) {
      setText(this.state, `the window gave no profile: ${err.message}`);
      if (err instanceof AuthNeeded) throw err;
    } finally {
      this.startButton.disabled = false;
    }
  }

  /** Its profile: the stop's answer, or (stopped by another worker of the
   * server, or by the limit a moment before) the stored profile once listed. */
  async stop(id) {
    try {
      return await postJSON(`/windows/${q(id)}/stop`);
    } catch (err) {
      if (!(err instanceof HttpError) || err.status !== 404) throw err;
    }
    for (let attempt = 1; ; attempt += 1) {
      try {
        return await getJSON(`/profiles/${q(id)}`);
      } catch (err) {
        if (!(err instanceof HttpError) || err.status !== 404 || attempt === 5) throw err;
      }
      await new Promise((done) => setTimeout(done, 1000));
    }
  }
}
