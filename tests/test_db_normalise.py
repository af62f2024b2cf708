"""Statements folded to their shape: no value a client sent survives (spec 7)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from asgi_perf.db.normalise import MAX_LENGTH, normalise


@pytest.mark.parametrize(
    ("sql", "shape"),
    [
        ("SELECT * FROM t WHERE id = 42", "SELECT * FROM t WHERE id = ?"),
        ("SELECT * FROM t WHERE name = 'O''Brien'", "SELECT * FROM t WHERE name = ?"),
        ("select  *\n\tfrom t\nwhere a=1.5e3", "select * from t where a=?"),
        ("SELECT 1 FROM t1 JOIN t2 ON t1.x = t2.y", "SELECT ? FROM t1 JOIN t2 ON t1.x = t2.y"),
        ("DELETE FROM t WHERE id IN (1, 2, 3, 4)", "DELETE FROM t WHERE id IN (?)"),
        ("DELETE FROM t WHERE id in (?,?,?)", "DELETE FROM t WHERE id in (?)"),
        ("INSERT INTO t (a, b) VALUES (1, 'x'), (2,'y'), (3, 'z')",
         "INSERT INTO t (a, b) VALUES (?, ?)"),
        ("SELECT * FROM t WHERE a = $1 AND b = %s AND c = :name AND d = %(e)s",
         "SELECT * FROM t WHERE a = $1 AND b = %s AND c = :name AND d = %(e)s"),
        ("SELECT x FROM t -- user 12345\nWHERE y = 0xFF", "SELECT x FROM t WHERE y = ?"),
        ("SELECT /* trace=abc123 */ \"col 1\", `col2` FROM t", 'SELECT "col 1", `col2` FROM t'),
        ("SELECT $$secret$$, $tag$also secret$tag$", "SELECT ?, ?"),
        ("SELECT E'esc\\'x', X'DEADBEEF'", "SELECT ?, ?"),
        ("SELECT price::numeric FROM t", "SELECT price::numeric FROM t"),
    ],
)  # fmt: skip
def test_literals_fold_and_the_rest_stays(sql: str, shape: str) -> None:
    assert normalise(sql) == shape


def test_an_unterminated_string_is_still_folded() -> None:
    assert normalise("SELECT 'half a secret") == "SELECT ?"


def test_a_huge_statement_is_cut() -> None:
    out = normalise("SELECT " + ", ".join(f"col{i}" for i in range(2000)) + " FROM t")
    assert len(out) == MAX_LENGTH
    assert out.endswith("…")


def test_statements_with_literals_are_not_remembered_by_their_text() -> None:
    from asgi_perf.db import normalise as module

    normalise("SELECT * FROM t WHERE token = 'tok-very-secret-1'")
    normalise("SELECT * FROM t WHERE token = ?")
    assert not any("secret" in key for key in module._cache)
    assert "SELECT * FROM t WHERE token = ?" in module._cache


def _literal(value: int | float | str | bytes) -> str:
    """``value`` inlined as SQL writes it (what an ORM without binding would send)."""
    if isinstance(value, bytes):
        return "X'" + value.hex() + "'"
    if isinstance(value, str):
        # Quotes doubled (SQL) and backslashes escaped (MySQL's client-side quoting).
        return "'" + value.replace("\\", "\\\\").replace("'", "''") + "'"
    return repr(value)


_values = st.one_of(
    st.integers(min_value=0),
    st.floats(min_value=0, allow_nan=False, allow_infinity=False),
    st.text(min_size=1),
    st.binary(min_size=1),
)


@settings(max_examples=400, deadline=None)
@given(
    values=st.lists(_values, min_size=1, max_size=6),
    in_list=st.lists(_values, min_size=1, max_size=8),
)
def test_no_generated_value_ever_appears_in_the_output(
    values: list[int | float | str | bytes], in_list: list[int | float | str | bytes]
) -> None:
    columns = [f"c_{chr(97 + i)}" for i in range(len(values))]
    where = " AND ".join(f"{c} = {_literal(v)}" for c, v in zip(columns, values, strict=True))
    members = ", ".join(_literal(v) for v in in_list)
    sql = f"SELECT * FROM items WHERE {where} AND kind IN ({members})"
    out = normalise(sql)
    expected_where = " AND ".join(f"{c} = ?" for c in columns)
    assert out == f"SELECT * FROM items WHERE {expected_where} AND kind IN (?)"
