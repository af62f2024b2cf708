"""``.svg``: an interactive flame graph drawn from full stacks, in one file.

The stacks merge into a tree (a node is a path prefix); each node is one
``<g>`` holding a ``<rect>``, a ``<title>`` tooltip and, when it fits, a
``<text>`` label. The root is at the top and callees hang below their
callers (an icicle), so the title, the controls and the busiest frames are
on the first screen. An inline script adds hover details, click to zoom,
regex search and reset; without it the file is still a readable picture.
"""

from __future__ import annotations

import re
import zlib

from asgi_perf.capture import Capture, FrameId
from asgi_perf.renderers._frames import is_library, label
from asgi_perf.renderers._tree import CallTree, merge

_WIDTH = 1200
_PAD = 10
_INNER = _WIDTH - 2 * _PAD
_ROW = 16
_TOP = 50
_CHAR_PX = 7.3  # one character of 12px monospace, rounded up
_SHADES = 8
_MAX_LABEL = 300

# Laid out: depth, offset in seconds from the left edge, frame, seconds.
_Placed = tuple[int, float, FrameId, float]

# Characters XML 1.0 forbids (names can carry anything a file system allows).
_NOT_XML = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


class FlameGraphRenderer:
    """Self-contained SVG: no external resources, no network, valid XML.

    Frames narrower than ``min_share`` of the width are left out (their
    caller shows the time), and at most ``max_nodes`` frames are drawn, fewer
    if the file would pass ``max_bytes``: a busy minute stays a file a
    browser opens at once.
    """

    format = "svg"
    file_extension = ".svg"
    media_type = "image/svg+xml"

    def __init__(
        self, *, min_share: float = 0.001, max_nodes: int = 8_000, max_bytes: int = 2_000_000
    ) -> None:
        self.min_share = min_share
        self.max_nodes = max_nodes
        self.max_bytes = max_bytes

    def render(self, capture: Capture) -> bytes:
        tree = merge(capture.stacks)
        total = tree.total
        heading = _heading(capture, total)
        if total <= 0:
            return _document(heading, [], 0, "No samples in this capture.").encode("utf-8")
        placed = _layout(tree, total * self.min_share)
        budget = self.max_nodes
        while True:
            if len(placed) > budget:
                # The widest frames, shallower first among equals: a child is
                # never wider than its parent, so what stays is still a tree.
                order = sorted(range(len(placed)), key=lambda i: (-placed[i][3], placed[i][0]))
                keep = set(order[:budget])
                placed = [p for i, p in enumerate(placed) if i in keep]
            svg = _document(heading, placed, total, "").encode("utf-8", "replace")
            if len(svg) <= self.max_bytes or budget <= 1:
                return svg
            budget //= 2


def _layout(tree: CallTree, floor: float) -> list[_Placed]:
    """Frames at least ``floor`` seconds wide, each parent before its children."""
    kids = tree.children(floor)
    out: list[_Placed] = []
    todo: list[tuple[int, int, float]] = [(-1, 0, 0.0)]
    while todo:
        n, depth, offset = todo.pop()
        for c in kids.get(n, ()):
            seconds = tree.seconds[c]
            out.append((depth, offset, tree.frames[tree.frame[c]], seconds))
            if c in kids:
                todo.append((c, depth + 1, offset))
            offset += seconds
    return out


def _document(heading: str, placed: list[_Placed], total: float, note: str) -> str:
    depth = max((p[0] for p in placed), default=0) + 1
    height = _TOP + depth * _ROW + 30
    scale = _INNER / total if total > 0 else 0.0
    parts = [
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f'<svg xmlns="http://www.w3.org/2000/svg" version="1.1" width="{_WIDTH}" '
        f'height="{height}" viewBox="0 0 {_WIDTH} {height}">\n'
        f"<title>{_esc(heading)}</title>\n<style>{_CSS}</style>\n"
        f'<rect width="100%" height="100%" fill="#fff"/>\n'
        f'<text id="t" x="{_PAD}" y="20">{_esc(heading)}</text>\n'
        f'<text id="q" class="c" x="{_WIDTH - _PAD}" y="20" text-anchor="end">'
        "Search (Ctrl-F)</text>\n"
        f'<text id="r" class="c h" x="{_PAD}" y="40">Reset zoom (Esc)</text>\n'
        f'<text id="m" class="c" x="{_WIDTH - _PAD}" y="40" text-anchor="end"></text>\n'
        '<g id="f">\n'
    ]
    labels: dict[FrameId, tuple[str, str, str]] = {}
    for d, offset, frame, seconds in placed:
        known = labels.get(frame)
        if known is None:
            known = labels[frame] = _frame_text(frame)
        text, name, css = known
        x = _PAD + offset * scale
        w = seconds * scale
        y = _TOP + d * _ROW
        fitted = _fit(name, w)
        label_el = f'<text x="{x + 3:.1f}" y="{y + 12}">{_esc(fitted)}</text>' if fitted else ""
        parts.append(
            f"<g><title>{text} \u2014 {_seconds(seconds)}, {100 * seconds / total:.1f} %</title>"
            f'<rect class="{css}" x="{x:.1f}" y="{y}" width="{w:.1f}" height="{_ROW - 1}"/>'
            f"{label_el}</g>\n"
        )
    status = _esc(note or "Hover a frame for details; click to zoom.")
    parts.append(
        f'</g>\n<text id="s" x="{_PAD}" y="{height - 10}">{status}</text>\n'
        f'<script type="text/ecmascript"><![CDATA[\n'
        f"var X0={_PAD},W={_INNER},CW={_CHAR_PX};\n{_JS}]]></script>\n</svg>\n"
    )
    return "".join(parts)


def _frame_text(frame: FrameId) -> tuple[str, str, str]:
    """Escaped tooltip label, plain function name, colour class."""
    text = label(frame)
    if len(text) > _MAX_LABEL:
        text = text[: _MAX_LABEL - 1] + "\u2026"
    name = (frame.function or "?")[:_MAX_LABEL]
    # crc32, not hash(): the same function keeps its colour across processes.
    shade = zlib.crc32(name.encode("utf-8", "replace")) % _SHADES
    css = f"{'l' if is_library(frame.file) else 'a'}{shade}"
    return _esc(text), name, css


def _fit(name: str, width: float) -> str:
    # The script clips the same way when zooming changes the width.
    room = int((width - 6) / _CHAR_PX)
    if room < 3:
        return ""
    return name if len(name) <= room else name[: room - 1] + "\u2026"


def _esc(text: str) -> str:
    text = _NOT_XML.sub("\ufffd", text)
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _seconds(seconds: float) -> str:
    ms = seconds * 1000
    if ms >= 1000:
        return f"{seconds:.2f} s"
    return f"{ms:.1f} ms" if ms >= 10 else f"{ms:.2f} ms"


def _heading(capture: Capture, total: float) -> str:
    meta = capture.meta
    method, route = meta.get("method"), meta.get("route")
    if meta.get("kind") in ("window", "lifespan"):
        what = "the whole process"
    elif method and route and not str(route).startswith(f"{method} "):
        what = f"{method} {route}"  # a route_key that leaves the method out
    else:
        what = str(route or method or "profile")
    bits = [str(meta.get("kind") or "profile"), capture.engine]
    kind = meta.get("kind")
    if capture.duration_s > 0 and kind not in ("file", "loop_blocks"):
        # A merge adds up its parts' durations: they may have overlapped.
        wall = "wall in all" if kind == "merged" else "wall"
        bits.append(f"{_seconds(capture.duration_s)} {wall}, {_seconds(total)} profiled")
    else:
        # A file read by the CLI (and the loop's blocks) has no clock time:
        # what is known is the sum over every call and thread, which can
        # exceed the time the profile ran.
        bits.append(f"{_seconds(total)} profiled (summed over calls and threads, not wall-clock)")
    if meta.get("parts"):
        bits.append(f"{meta['parts']} profiles merged")
    if meta.get("status"):
        bits.append(f"status {meta['status']}")
    if not capture.exact_stacks:
        bits.append("stacks inferred from call counts")
    return f"{what} \u2014 {', '.join(bits)}"


def _palette() -> str:
    # Warm for the app's own code, a cool blue-grey for libraries and the
    # standard library, so the app's frames stand out.
    rules = []
    for i in range(_SHADES):
        rules.append(f".a{i}{{fill:hsl({5 + i * 6},{75 + i % 3 * 8}%,{58 + i % 4 * 4}%)}}")
        rules.append(f".l{i}{{fill:hsl({195 + i * 4},{30 + i % 3 * 8}%,{68 + i % 4 * 3}%)}}")
    return "".join(rules)


_CSS = (
    "text{font:12px monospace;fill:#000}#t{font:bold 15px sans-serif}"
    "#f text{pointer-events:none}#f rect{stroke:#fff;stroke-width:.5}"
    ".c{cursor:pointer;fill:#036;text-decoration:underline}.h{display:none}"
    "#f g{cursor:pointer}#f g:hover rect{stroke:#000}g.z{opacity:.55}"
    + _palette()
    + ".m{fill:#e600e6}"
)

# Kept free of "]]>" (it sits in CDATA) and of any URL: the file makes no requests.
_JS = r"""(function () {
  var svg = document.documentElement, F = document.getElementById('f'),
      S = document.getElementById('s'), R = document.getElementById('r'),
      Q = document.getElementById('q'), M = document.getElementById('m'),
      hint = S.textContent, last = '', zoomed = null;

  function info(g) {
    if (g._w === undefined) {
      var r = g.getElementsByTagName('rect')[0],
          t = g.getElementsByTagName('title')[0].textContent,
          k = t.slice(0, t.lastIndexOf(' \u2014 ')), p = k.lastIndexOf(' (');
      g._r = r; g._x = +r.getAttribute('x'); g._w = +r.getAttribute('width');
      g._y = +r.getAttribute('y'); g._k = k; g._n = p < 0 ? k : k.slice(0, p);
    }
    return g;
  }
  function fit(name, w) {
    var room = Math.floor((w - 6) / CW);
    if (room < 3) return '';
    return name.length <= room ? name : name.slice(0, room - 1) + '\u2026';
  }
  function place(g, x, w) {
    var t = g.getElementsByTagName('text')[0], s = fit(g._n, w);
    g._r.setAttribute('x', x.toFixed(1)); g._r.setAttribute('width', w.toFixed(1));
    if (!t && s) {
      t = document.createElementNS(svg.namespaceURI, 'text');
      t.setAttribute('y', g._y + 12); g.appendChild(t);
    }
    if (t) { t.setAttribute('x', (x + 3).toFixed(1)); t.textContent = s; }
  }
  function each(fn) {
    for (var i = 0, gs = F.children; i < gs.length; i++) fn(info(gs[i]));
  }
  function zoom(z) {
    var x0 = z._x - 0.2, x1 = z._x + z._w + 0.2, k = W / z._w;
    zoomed = z;
    each(function (g) {
      var inside = g._x >= x0 && g._x + g._w <= x1,
          above = g._y < z._y && g._x <= x0 + 0.4 && g._x + g._w >= x1 - 0.4;
      g.classList.toggle('h', !inside && !above);
      g.classList.toggle('z', above);
      if (above) place(g, X0, W);
      else if (inside) place(g, X0 + (g._x - z._x) * k, g._w * k);
    });
    R.classList.remove('h');
  }
  function reset() {
    zoomed = null;
    each(function (g) {
      g.classList.remove('h', 'z');
      place(g, g._x, g._w);
    });
    R.classList.add('h');
  }
  function search(re) {
    var hits = [], end = -1, sum = 0;
    each(function (g) {
      var on = !!re && re.test(g._k);
      g._r.classList.toggle('m', on);
      if (on) hits.push(g);
    });
    // Matches nested in a match are already inside its width.
    hits.sort(function (a, b) { return a._x - b._x || b._w - a._w; });
    hits.forEach(function (g) {
      if (g._x >= end - 0.2) { sum += g._w; end = g._x + g._w; }
    });
    M.textContent = re ? 'Matched ' + hits.length + ' frames, ' +
      (100 * sum / W).toFixed(1) + ' % of the time (click to clear)' : '';
  }
  function ask() {
    var p = window.prompt('Highlight frames matching a regular expression ' +
                          '(against "function (file:line)"):', last);
    if (p === null) return;
    last = p;
    if (!p) { search(null); return; }
    try { search(new RegExp(p)); } catch (e) { M.textContent = 'Not a regex: ' + e.message; }
  }
  function frame(e) {
    var g = e.target.closest ? e.target.closest('g') : null;
    return g && g.parentNode === F ? g : null;
  }
  F.addEventListener('mouseover', function (e) {
    var g = frame(e);
    if (g) S.textContent = g.getElementsByTagName('title')[0].textContent;
  });
  F.addEventListener('mouseout', function () { S.textContent = hint; });
  F.addEventListener('click', function (e) {
    var g = frame(e);
    if (g) zoom(info(g));
  });
  R.addEventListener('click', reset);
  Q.addEventListener('click', ask);
  M.addEventListener('click', function () { last = ''; search(null); });
  window.addEventListener('keydown', function (e) {
    if ((e.ctrlKey || e.metaKey) && (e.key === 'f' || e.key === 'F')) {
      e.preventDefault(); ask();
    } else if (e.key === 'Escape') {
      if (zoomed) reset(); else search(null);
    }
  });
})();
"""
