"""SQL text folded to its shape: literals become ``?``, so no value is kept.

``SELECT * FROM t WHERE id = 42 AND name = 'ann'`` and the same query for
another id are one statement, ``SELECT * FROM t WHERE id = ? AND name = ?``.
Strings, numbers, hex and blob literals, comments (they may carry ids) and
``IN (...)`` lists are folded; placeholders (``?``, ``%s``, ``$1``,
``:name``) are kept as they are. Spec 7: the values a client sent are never
stored, only this shape.
"""

from __future__ import annotations

import re

# One pass, alternatives in priority order: a quote inside a comment or a
# digit inside a string must not start a token of its own. A backslash
# escapes the next character in a string (MySQL, PostgreSQL E''): reading
# it so in a standard string only ever folds more, never less.
_TOKENS = re.compile(
    r"""
      (?P<comment>--[^\n]*|/\*.*?(?:\*/|\Z))
    | (?P<dollar>\$(?P<tag>[A-Za-z_]*)\$.*?(?:\$(?P=tag)\$|\Z))
    | (?P<string>(?:[EeNnBbXx]|[Uu]&)?'(?:[^'\\]|''|\\.)*(?:'|\Z))
    | (?P<ident>"(?:[^"]|"")*"|`[^`]*`|\[[^\]\n]*\])
    | (?P<placeholder>[$:@]\w+|%\(\w+\)s|%s)
    | (?P<word>[A-Za-z_][\w$]*)
    | (?P<number>0[xX][0-9A-Fa-f]+|(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)
    """,
    re.VERBOSE | re.DOTALL,
)
_SPACE = re.compile(r"\s+")
# ``IN (?, ?, ?)`` and ``VALUES (?, ?), (?, ?)``: as many values as rows or
# ids, so folded to one.
_IN_LIST = re.compile(r"\b(IN)\s*\(\s*\?(?:\s*,\s*\?)*\s*\)", re.IGNORECASE)
_TUPLE = re.compile(r"\(\s*\?(?:\s*,\s*\?)*\s*\)")
_ROWS = re.compile(r"(\((?:\s*\?\s*,)*\s*\?\s*\))(?:\s*,\s*\1)+")
MAX_LENGTH = 1000
_CACHE_SIZE = 4096
_cache: dict[str, str] = {}


def normalise(sql: str) -> str:
    """The statement's shape: literals as ``?``, whitespace collapsed, at most 1000 chars."""
    found = _cache.get(sql)
    if found is not None:
        return found
    folded = False
    parts: list[str] = []
    last = 0
    for m in _TOKENS.finditer(sql):
        kind = m.lastgroup
        if kind in ("word", "ident", "placeholder"):
            continue
        parts.append(sql[last : m.start()])
        last = m.end()
        if kind == "comment":
            parts.append(" ")
        else:
            folded = True
            parts.append("?")
    parts.append(sql[last:])
    text = _SPACE.sub(" ", "".join(parts)).strip()
    text = _IN_LIST.sub(r"\1 (?)", text)
    if "(?" in text:
        text = _ROWS.sub(r"\1", _TUPLE.sub(_tuple, text))
    if len(text) > MAX_LENGTH:
        text = text[: MAX_LENGTH - 1] + "…"
    if not folded:
        # Only a statement with no literal is remembered by its own text: a
        # literal may be a value a client sent, which is never kept.
        if len(_cache) >= _CACHE_SIZE:
            _cache.clear()
        _cache[sql] = text
    return text


def _tuple(m: re.Match[str]) -> str:
    return "(" + ", ".join("?" * m.group().count("?")) + ")"
