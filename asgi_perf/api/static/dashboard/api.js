// Every call of the page goes through here: the prefix the server injected,
// and the token (when one is configured) as an Authorization header.
//
// The token lives in sessionStorage: it survives a reload of this tab, dies
// with the tab, and is never put in a URL or a cookie (a cookie would ride
// along on every request to the app and on cross-site forms).

const root = document.documentElement;

/** root_path + prefix, e.g. "/_perf": where the API is. */
export const BASE = root.dataset.base || "";

/** The server said it wants a token: ask for it before the first call. */
export const TOKEN_EXPECTED = root.dataset.auth === "token";

const KEY = `asgi_perf.token ${BASE}`;
// Where the token is kept when storage is disabled: until this page reloads.
let memoryToken = null;

export function token() {
  try {
    return sessionStorage.getItem(KEY) ?? memoryToken;
  } catch {
    return memoryToken;
  }
}

export function setToken(value) {
  memoryToken = value || null;
  try {
    if (value) sessionStorage.setItem(KEY, value);
    else sessionStorage.removeItem(KEY);
  } catch {
    // Storage disabled: memoryToken holds it.
  }
}

/** The server refused the token (or needs one): the page asks for it. */
export class AuthNeeded extends Error {}

/** Any other refusal, with the server's own message. */
export class HttpError extends Error {
  constructor(status, message, body) {
    super(message);
    this.status = status;
    this.body = body;
  }
}

async function call(path, { method = "GET", accept = "application/json" } = {}) {
  const headers = { Accept: accept };
  const given = token();
  if (given) headers.Authorization = `Bearer ${given}`;
  let response;
  try {
    response = await fetch(BASE + path, {
      method,
      headers,
      cache: "no-store",
      credentials: "same-origin",
      redirect: "error",
    });
  } catch (err) {
    // A token with characters a header cannot hold fails here, not at the server.
    if (err instanceof TypeError && given && /header/i.test(err.message)) {
      throw new AuthNeeded("that token cannot be sent in a header (Latin-1 only)");
    }
    throw new HttpError(0, "the server is unreachable; retrying", null);
  }
  if (response.status === 401) {
    throw new AuthNeeded(given ? "the server refused that token" : "this server needs a token");
  }
  return response;
}

async function errorOf(response) {
  let body = null;
  try {
    body = await response.json();
  } catch {
    // Not JSON (a proxy's page): the status says enough.
  }
  const message = (body && body.error) || `${response.status} ${response.statusText}`;
  return new HttpError(response.status, message, body);
}

export async function getJSON(path) {
  const response = await call(path);
  if (!response.ok) throw await errorOf(response);
  return response.json();
}

export async function postJSON(path) {
  const response = await call(path, { method: "POST" });
  if (!response.ok) throw await errorOf(response);
  return response.json();
}

/** A file (a flame graph, a .prof) as a Blob: fetched with the token, unlike a link. */
export async function getBlob(path) {
  const response = await call(path, { accept: "*/*" });
  if (!response.ok) throw await errorOf(response);
  return response.blob();
}

/** Save a file fetched with the token under its own name. */
export async function download(path, filename) {
  const blob = await getBlob(path);
  const url = URL.createObjectURL(blob);
  const link = document.createElement("a");
  link.href = url;
  link.download = filename;
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10000);
}

/** A path segment or query value, escaped. */
export const q = encodeURIComponent;
