"""Content-Security-Policy for the documents ``/_perf`` shows in a browser.

A flame graph, pyinstrument's viewer, snakeviz and speedscope are served
from the app's own origin, next to its cookies and to ``/_perf``'s actions.
Each page gets a policy that lets its own scripts run and nothing else load:
``default-src 'none'``, no ``connect-src`` to the network, no forms, no
``<base>``. Inline scripts are allowed by their SHA-256 hashes, taken from
the document as it is sent, never by ``'unsafe-inline'``: event-handler
attributes and ``javascript:`` URLs stay blocked.

Styles are ``'unsafe-inline'``: the viewers set them at run time (Svelte,
aphrodite, d3), and with nothing else allowed to load a style sheet has no
way to send anything out.
"""

from __future__ import annotations

import base64
import hashlib
import re
import xml.etree.ElementTree as ET
from collections.abc import Iterable

# Up to the first end tag, as the HTML tokenizer ends a script's text.
_HTML_SCRIPT = re.compile(r"<script\b([^>]*)>(.*?)</script[\s/>]", re.S | re.I)
_SRC_ATTR = re.compile(r"\ssrc\s*=", re.I)
# XML has no raw "<" in text: a "<script" is a tag (or inside CDATA, which
# would at worst give a wrong hash, and a script that does not run).
_SVG_SCRIPT = re.compile(rb"<script\b[^>]*>.*?</script\s*>", re.S)
_NONE = "'none'"

# What every page shares: nothing loads unless a directive below allows it.
_BASE = (
    "default-src 'none'",
    "base-uri 'none'",
    "form-action 'none'",
    # The dashboard may frame a profile; other sites may not.
    "frame-ancestors 'self'",
)


def policy(*directives: str) -> str:
    """One header value: the shared base, then ``directives``."""
    return "; ".join((*_BASE, *directives))


def script_hash(source: str) -> str:
    """A ``'sha256-…'`` source for one inline script's text, as a browser hashes it."""
    # Parsers turn CR LF and lone CR into LF before a script's text exists.
    text = source.replace("\r\n", "\n").replace("\r", "\n")
    digest = hashlib.sha256(text.encode("utf-8", "replace")).digest()
    return f"'sha256-{base64.b64encode(digest).decode('ascii')}'"


def html_script_hashes(document: str) -> list[str]:
    """The hash of every inline ``<script>`` of an HTML document, in order, once each."""
    return _unique(
        script_hash(body)
        for attrs, body in _HTML_SCRIPT.findall(document)
        if not _SRC_ATTR.search(" " + attrs)
    )


def svg_script_hashes(document: bytes) -> list[str]:
    """The hash of every ``<script>`` of an SVG document (XML: CDATA and entities resolved)."""
    hashes = []
    # Each script element is parsed on its own: the whole of a 2 MB flame
    # graph would take an XML parser 0.2 s per request.
    for found in _SVG_SCRIPT.finditer(document):
        try:
            element = ET.fromstring(found.group(0))
        except ET.ParseError:
            # Not well-formed on its own (a namespace prefix declared
            # further up, say): no hash, so it does not run. Fails closed.
            continue
        hashes.append(script_hash("".join(element.itertext())))
    return _unique(hashes)


def document_policy(body: bytes, media_type: str) -> str:
    """The policy of a self-contained document (``.svg``, ``.html``): only its own scripts."""
    if media_type.startswith("image/svg"):
        hashes = svg_script_hashes(body)
    else:
        hashes = html_script_hashes(body.decode("utf-8", "replace"))
    return policy(
        f"script-src {' '.join(hashes) or _NONE}",
        # pyinstrument's viewer swaps its web fonts for an empty data: sheet;
        # a self-contained page may carry images and fonts as data: URLs too.
        "style-src 'unsafe-inline' data:",
        "img-src data:",
        "font-src data:",
        "connect-src 'none'",
    )


def _unique(hashes: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(hashes))
