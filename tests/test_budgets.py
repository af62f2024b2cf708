"""Budgets: loading from every source, units, errors, precedence, verdicts."""

from __future__ import annotations

from pathlib import Path
from typing import Any, get_args

import pytest

from asgi_perf.budgets import (
    METRICS,
    Budget,
    BudgetReport,
    BudgetSet,
    Outcome,
    Verdict,
    load_budgets,
)
from asgi_perf.errors import ConfigError
from asgi_perf.units import number_text, parse_duration_ms, parse_rate, parse_size_mb


def route(
    key: str,
    count: int = 100,
    *,
    p50: float = 10.0,
    p99: float = 50.0,
    max_ms: float = 80.0,
    errors: int = 0,
    mem_max: float = 1.0,
    mem_samples: int | None = None,
) -> dict[str, Any]:
    """One snapshot route entry, shaped like the middleware's."""
    method, _, template = key.partition(" ") if " " in key else ("", "", key)
    return {
        "route": key,
        "method": method,
        "template": template,
        "count": count,
        "errors": errors,
        "exceptions": 0,
        "latency_ms": {"p50": p50, "p90": p99, "p95": p99, "p99": p99, "p999": max_ms,
                       "max": max_ms, "mean": p50},
        "memory_mb": {"p50": mem_max, "p99": mem_max, "max": mem_max, "mean": mem_max,
                      "samples": count if mem_samples is None else mem_samples, "method": "rss"},
    }  # fmt: skip


def snapshot(*routes: dict[str, Any]) -> dict[str, Any]:
    return {"schema": 1, "routes": list(routes)}


def verdicts(budgets: BudgetSet, *routes: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    """(route, metric, pattern, verdict) of every verdict, in report order."""
    result = budgets.check(snapshot(*routes))
    return [(v["route"], v["metric"], v["pattern"], v["verdict"]) for v in result["verdicts"]]


# --- sources -----------------------------------------------------------------

EXPECTED = (Budget("GET /api/products", {"p50_ms": 50.0, "p99_ms": 200.0, "max_mb": 10.0}),)
TABLE = '["GET /api/products"]\np50_ms = 50\np99_ms = "200 ms"\nmax_mb = "10 MB"\n'


@pytest.mark.parametrize(
    ("filename", "text", "source_suffix"),
    [
        ("budgets.toml", "min_samples = 5\n" + TABLE, "budgets.toml"),
        ("perf.toml", "[budgets]\nmin_samples = 5\n" + TABLE.replace('["', '[budgets."'),
         "perf.toml [budgets]"),
        ("pyproject.toml",
         "[project]\nname = 'x'\n[tool.asgi_perf.budgets]\nmin_samples = 5\n"
         + TABLE.replace('["', '[tool.asgi_perf.budgets."'),
         "pyproject.toml [tool.asgi_perf.budgets]"),
    ],
)  # fmt: skip
def test_load_from_files(tmp_path: Path, filename: str, text: str, source_suffix: str) -> None:
    path = tmp_path / filename
    path.write_text(text)
    for source in (path, str(path)):
        budgets = load_budgets(source)
        assert budgets.budgets == EXPECTED
        assert budgets.min_samples == 5
        assert budgets.source == str(tmp_path / source_suffix)


def test_load_from_dict() -> None:
    budgets = load_budgets(
        {"GET /api/products": {"p50_ms": 50, "p99_ms": 0.2 * 1000, "max_mb": "10MiB"}},
        min_samples=7,
    )
    assert budgets.budgets == EXPECTED
    assert (budgets.min_samples, budgets.source) == (7, "budgets")
    assert load_budgets({"min_samples": 3}, min_samples=7).min_samples == 3


def test_none_reads_pyproject_if_it_has_budgets(tmp_path: Path) -> None:
    pyproject = tmp_path / "pyproject.toml"
    assert not load_budgets(None, pyproject=pyproject)  # no file
    pyproject.write_text("[project]\nname = 'x'\n")
    empty = load_budgets(None, pyproject=pyproject, min_samples=3)
    assert not empty
    assert (empty.min_samples, empty.source) == (3, "<none>")
    pyproject.write_text('[tool.asgi_perf.budgets]\n"GET /x" = { p99_ms = 5 }\n')
    assert load_budgets(None, pyproject=pyproject).budgets == (Budget("GET /x", {"p99_ms": 5}),)
    assert not load_budgets(None, pyproject=None)


def test_budget_set_passes_through() -> None:
    budgets = BudgetSet((Budget("*", {"max_ms": 1}),), min_samples=1)
    assert load_budgets(budgets) is budgets
    assert budgets and not BudgetSet()


def test_pattern_is_normalised() -> None:
    assert Budget("  get   /x/* ", {"p50_ms": 1}).pattern == "GET /x/*"


# --- units -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("parse", "value", "expected"),
    [
        (parse_duration_ms, 150, 150.0),
        (parse_duration_ms, "150 ms", 150.0),
        (parse_duration_ms, "150ms", 150.0),
        (parse_duration_ms, "0.2 s", 200.0),
        (parse_duration_ms, "1.5s", 1500.0),
        (parse_duration_ms, "200us", 0.2),
        (parse_duration_ms, "200 µs", 0.2),
        (parse_duration_ms, "1 min", 60_000.0),
        (parse_duration_ms, "42", 42.0),
        (parse_size_mb, 10, 10.0),
        (parse_size_mb, "24 MB", 24.0),
        (parse_size_mb, "24MiB", 24.0),
        (parse_size_mb, "512 KB", 0.5),
        (parse_size_mb, "1 GB", 1024.0),
        (parse_size_mb, "1048576 B", 1.0),
        (parse_rate, 0.01, 0.01),
        (parse_rate, "0.01", 0.01),
        (parse_rate, "1%", 0.01),
        (parse_rate, "100 %", 1.0),
        (parse_rate, 0, 0.0),
    ],
)
def test_units(parse: Any, value: object, expected: float) -> None:
    assert parse(value, name="x") == pytest.approx(expected)


# --- errors ------------------------------------------------------------------

KNOWN = (
    "known: p50_ms, p90_ms, p95_ms, p99_ms, max_ms, max_mb, error_rate, max_queries, p99_db_ms, "
    "min_samples"
)


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ({"GET /x": {"p42_ms": 1}}, f"budgets: \"GET /x\": unknown field 'p42_ms' ({KNOWN})"),
        ({"GET /x": {"p99_ms": -1}}, 'budgets: "GET /x": p99_ms: must be >= 0'),
        ({"GET /x": {"p99_ms": "-1 ms"}}, 'budgets: "GET /x": p99_ms: expected a duration'),
        ({"GET /x": {"p99_ms": "150 parsecs"}}, "p99_ms: expected a duration like '150 ms'"),
        ({"GET /x": {"p99_ms": True}}, 'budgets: "GET /x": p99_ms: expected a number'),
        ({"GET /x": {"p99_ms": [1]}}, 'budgets: "GET /x": p99_ms: expected a number'),
        ({"GET /x": {"p99_ms": float("nan")}}, "p99_ms: must be a finite number"),
        ({"GET /x": {"p99_ms": "1e999 ms"}}, "p99_ms: must be a finite number"),
        ({"GET /x": {"max_mb": "24 furlongs"}}, 'budgets: "GET /x": max_mb: expected a size'),
        ({"GET /x": {"error_rate": 2}}, 'budgets: "GET /x": error_rate: must be between 0 and 1'),
        ({"GET /x": {"error_rate": "150%"}}, "error_rate: must be between 0 and 1"),
        ({"GET /x": {"error_rate": "1 in 100"}}, "error_rate: expected a rate"),
        (
            {"GET /x": {"p99_ms": 1, "min_samples": -1}},
            'budgets: "GET /x": min_samples: must be a whole',
        ),
        ({"GET /x": {"p99_ms": 1, "min_samples": 2.5}}, '"GET /x": min_samples: must be'),
        ({"GET /x": {"p99_ms": 1, "min_samples": True}}, '"GET /x": min_samples: must be'),
        ({"min_samples": "20"}, "budgets: min_samples: must be a whole number"),
        ({"GET /x": 150}, 'budgets: "GET /x": expected a table of limits, got int'),
        ({"GET /x": {}}, 'budgets: "GET /x": no limits'),
        ({"GET /x": {"min_samples": 3}}, 'budgets: "GET /x": no limits'),
        ({"": {"p99_ms": 1}}, 'budgets: "": empty route pattern'),
        ({"  ": {"p99_ms": 1}}, 'budgets: "  ": empty route pattern'),
        ({"G(T /x": {"p99_ms": 1}}, "budgets: \"G(T /x\": method 'G(T' is not an HTTP method"),
        ({"* /x": {"p99_ms": 1}}, "leave the method out to match any"),
        ({"GET x": {"p99_ms": 1}}, "budgets: \"GET x\": path must start with '/'"),
        ({"GET /x y": {"p99_ms": 1}}, 'budgets: "GET /x y": expected "METHOD /path"'),
        ({"GET <other>": {"p99_ms": 1}}, 'budgets: "GET <other>": <other> takes no method'),
        ({"GET /x": {"p99_ms": 1}, "get /x": {"p50_ms": 1}}, '"get /x": duplicate of "GET /x"'),
        (42, "budgets: must be a dict, a path to a TOML file"),
    ],
)
def test_invalid_input_names_what_is_wrong(source: Any, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_budgets(source)
    assert message in str(info.value)


@pytest.mark.parametrize(
    ("filename", "text", "message"),
    [
        ("b.toml", "[GET /x]\n", "b.toml: invalid TOML"),
        ("b.toml", "\xff", "b.toml: invalid TOML"),
        ("b.toml", '["GET /x"]\np42_ms = 1\n', "b.toml: \"GET /x\": unknown field 'p42_ms'"),
        ("b.toml", '"GET /x" = 150\n', 'b.toml: "GET /x": expected a table of limits'),
        ("b.toml", 'budgets = 1\n', "b.toml [budgets]: expected a table of route patterns"),
        ("b.toml", '["GET /x"]\np99_ms = "fast"\n', "b.toml: \"GET /x\": p99_ms: expected"),
        ("pyproject.toml", "[project]\n", "pyproject.toml: no [tool.asgi_perf.budgets] table"),
        ("pyproject.toml", '[tool.asgi_perf.budgets."/x"]\nmax_mb = true\n',
         'pyproject.toml [tool.asgi_perf.budgets]: "/x": max_mb: expected a number'),
    ],
)  # fmt: skip
def test_invalid_file_names_the_file(
    tmp_path: Path, filename: str, text: str, message: str
) -> None:
    path = tmp_path / filename
    path.write_bytes(text.encode("latin-1"))
    with pytest.raises(ConfigError) as info:
        load_budgets(path)
    assert str(path) in str(info.value)
    assert message in str(info.value)


@pytest.mark.parametrize("make", [lambda p: p / "missing.toml", lambda p: p])
def test_unreadable_file_names_the_path(tmp_path: Path, make: Any) -> None:
    path = make(tmp_path)  # a missing file, then a directory
    with pytest.raises(ConfigError, match="cannot read budgets") as info:
        load_budgets(path)
    assert str(path) in str(info.value)


def test_invalid_pyproject_fails_even_when_implicit(tmp_path: Path) -> None:
    pyproject = tmp_path / "pyproject.toml"
    pyproject.write_text("[tool\n")
    with pytest.raises(ConfigError, match=r"pyproject\.toml: invalid TOML"):
        load_budgets(None, pyproject=pyproject)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: Budget("GET /x", {"p99_ms": "fast"}), '"GET /x": p99_ms: expected a duration'),
        (lambda: Budget("GET /x", {"p42_ms": 1}), "\"GET /x\": unknown field 'p42_ms'"),
        (lambda: Budget("GET /x", [("p99_ms", 1)]), '"GET /x": limits must be a mapping'),
        (lambda: Budget(None, {"p99_ms": 1}), "None: route pattern must be a string"),
        (lambda: Budget("/x", {"p99_ms": 1}, min_samples=-1), '"/x": min_samples: must be'),
        (lambda: BudgetSet(min_samples=-1), "<none>: min_samples: must be a whole number"),
    ],
)
def test_direct_construction_is_checked(make: Any, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        make()
    assert message in str(info.value)


# --- matching and precedence -------------------------------------------------

PRECEDENCE = {
    "*": {"p99_ms": 1000, "max_ms": 1000},
    "/items/*": {"p99_ms": 100, "max_ms": 100},
    "GET /items/*": {"p99_ms": 90},
    "GET /items/{item_id}*": {"p99_ms": 80},
    "/items/{item_id}": {"p99_ms": 70},
    "GET /items/{item_id}": {"p50_ms": 5},
}


@pytest.mark.parametrize(
    ("key", "expected"),
    [
        # An exact pattern without method beats every glob.
        ("GET /items/{item_id}", {"p50_ms": "GET /items/{item_id}", "p99_ms": "/items/{item_id}",
                                  "max_ms": "/items/*"}),
        ("DELETE /items/{item_id}", {"p99_ms": "/items/{item_id}", "max_ms": "/items/*"}),
        # Among globs, more literal characters win over a method.
        ("GET /items/{item_id}/tags", {"p99_ms": "GET /items/{item_id}*", "max_ms": "/items/*"}),
        ("GET /items/new", {"p99_ms": "GET /items/*", "max_ms": "/items/*"}),
        ("POST /items/new", {"p99_ms": "/items/*", "max_ms": "/items/*"}),
        ("get /items/new", {"p99_ms": "/items/*", "max_ms": "/items/*"}),  # methods are upper
        ("GET /users", {"p99_ms": "*", "max_ms": "*"}),
        ("healthz", {"p99_ms": "*", "max_ms": "*"}),  # a key from a custom route_key
        ("<unmatched>", {}),
        ("<other>", {}),
    ],
)  # fmt: skip
def test_most_specific_pattern_applies_per_metric(key: str, expected: dict[str, str]) -> None:
    budgets = load_budgets(PRECEDENCE, min_samples=0)
    applied = {v["metric"]: v["pattern"] for v in budgets.check(snapshot(route(key)))["verdicts"]
               if v["route"] == key}  # fmt: skip
    assert applied == expected


@pytest.mark.parametrize(
    ("pattern", "key", "matches"),
    [
        ("GET /a/?", "GET /a/b", True),
        ("GET /a/?", "GET /a/bc", False),
        ("GET /a/[bc]", "GET /a/c", True),
        ("GET /a/[bc]", "GET /a/d", False),
        ("GET *", "GET /anything/at/all", True),
        ("GET *", "POST /x", False),
        ("/a/*", "PUT /a/b/c", True),
        ("/A/*", "GET /a/b", False),  # paths are case-sensitive
        ("<unmatched>", "<unmatched>", True),
        ("<unmatched>", "<other>", False),
        ("*", "<other>", False),
    ],
)
def test_glob_matching(pattern: str, key: str, matches: bool) -> None:
    assert Budget(pattern, {"p99_ms": 1}).matches(key) is matches


def test_equally_specific_globs_first_defined_wins() -> None:
    budgets = load_budgets({"/a*": {"p99_ms": 1}, "/*a": {"p99_ms": 2}}, min_samples=0)
    assert verdicts(budgets, route("GET /aa")) == [("GET /aa", "p99_ms", "/a*", "fail")]


# --- verdicts ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("limits", "entry", "verdict", "measured", "margin"),
    [
        ({"p99_ms": 60}, route("GET /x", p99=50.0), "pass", 50.0, 10.0),
        ({"p99_ms": 50}, route("GET /x", p99=50.0), "pass", 50.0, 0.0),  # at the limit passes
        ({"p99_ms": "40 ms"}, route("GET /x", p99=50.0), "fail", 50.0, -10.0),
        ({"p50_ms": "0.1 s"}, route("GET /x", p50=12.5), "pass", 12.5, 87.5),
        ({"max_ms": 70}, route("GET /x", max_ms=80.0), "fail", 80.0, -10.0),
        ({"p99_ms": 60}, route("GET /x", count=19), "insufficient", 50.0, 10.0),
        ({"p99_ms": 60}, route("GET /x", count=0), "insufficient", None, None),
        ({"error_rate": "1%"}, route("GET /x", errors=1), "pass", 0.01, 0.0),
        ({"error_rate": "1%"}, route("GET /x", errors=2), "fail", 0.02, -0.01),
        ({"error_rate": 0.5}, route("GET /x", count=3, errors=1), "insufficient",
         0.333333, 0.166667),
        ({"max_mb": "10 MB"}, route("GET /x", mem_max=12.5), "fail", 12.5, -2.5),
        ({"max_mb": "1 GB"}, route("GET /x", mem_max=12.5), "pass", 12.5, 1011.5),
        # Memory is sampled: its own sample count decides.
        ({"max_mb": 10}, route("GET /x", mem_max=1.0, mem_samples=5), "insufficient", 1.0, 9.0),
        ({"max_mb": 10}, route("GET /x", mem_samples=0), "insufficient", None, None),
    ],
)  # fmt: skip
def test_verdict(
    limits: dict[str, Any],
    entry: dict[str, Any],
    verdict: str,
    measured: float | None,
    margin: float | None,
) -> None:
    budgets = load_budgets({"GET /x": limits})
    result = budgets.check(snapshot(entry))
    (v,) = result["verdicts"]
    assert v["verdict"] == verdict
    assert v["measured"] == pytest.approx(measured)
    assert v["margin"] == pytest.approx(margin)
    assert v["limit"] == pytest.approx(budgets.budgets[0].limits[v["metric"]])
    assert v["samples"] == (entry["memory_mb"]["samples"] if "max_mb" in limits else entry["count"])
    assert set(v) == {"route", "pattern", "metric", "limit", "measured", "margin", "samples",
                      "verdict"}  # fmt: skip
    assert set(v) == Verdict.__required_keys__  # the record names exactly what is served
    assert result["ok"] is (verdict != "fail")


@pytest.mark.parametrize(
    ("set_min", "pattern_min", "count", "verdict"),
    [
        (20, None, 19, "insufficient"),
        (20, None, 20, "pass"),
        (5, None, 5, "pass"),
        (20, 5, 5, "pass"),  # the pattern's own min_samples wins
        (5, 50, 20, "insufficient"),
        (0, None, 0, "insufficient"),  # nothing measured is never a pass
    ],
)
def test_min_samples(set_min: int, pattern_min: int | None, count: int, verdict: str) -> None:
    fields: dict[str, Any] = {"p99_ms": 100}
    if pattern_min is not None:
        fields["min_samples"] = pattern_min
    budgets = load_budgets({"min_samples": set_min, "GET /x": fields})
    result = budgets.check(snapshot(route("GET /x", count=count)))
    assert result["min_samples"] == set_min
    assert [v["verdict"] for v in result["verdicts"]] == [verdict]


def test_exact_pattern_without_traffic_is_reported() -> None:
    # Only an exact pattern with a method names one route that could be missing.
    budgets = load_budgets(
        {"GET /never": {"max_ms": 1, "p50_ms": 1}, "/glob/*": {"p99_ms": 1}, "/x": {"p99_ms": 1}}
    )
    result = budgets.check(snapshot())
    assert result["ok"] is True
    assert [(v["route"], v["metric"], v["samples"], v["measured"], v["margin"], v["verdict"])
            for v in result["verdicts"]] == [
        ("GET /never", "p50_ms", 0, None, None, "insufficient"),
        ("GET /never", "max_ms", 0, None, None, "insufficient"),
    ]  # fmt: skip


def test_report_order_and_ok() -> None:
    budgets = load_budgets({"*": {"p50_ms": 20, "p99_ms": 60}, "GET /z": {"p99_ms": 1}})
    result = budgets.check(
        snapshot(route("GET /b", p99=70.0), route("GET /a"), route("GET /z"), route("GET /c", 3))
    )
    assert result["ok"] is False
    assert (result["schema"], result["source"]) == (1, "budgets")
    assert set(result) == BudgetReport.__required_keys__
    assert {v["verdict"] for v in result["verdicts"]} == set(get_args(Outcome))
    assert [(v["route"], v["metric"], v["verdict"]) for v in result["verdicts"]] == [
        ("GET /b", "p99_ms", "fail"),
        ("GET /z", "p99_ms", "fail"),
        ("GET /a", "p50_ms", "pass"),
        ("GET /a", "p99_ms", "pass"),
        ("GET /b", "p50_ms", "pass"),
        ("GET /c", "p50_ms", "insufficient"),
        ("GET /c", "p99_ms", "insufficient"),
        ("GET /z", "p50_ms", "pass"),
    ]
    assert BudgetSet().check(snapshot(route("GET /a"))) == {
        "schema": 1, "ok": True, "source": "<none>", "min_samples": 20, "verdicts": []
    }  # fmt: skip


def test_special_keys_only_by_exact_pattern() -> None:
    budgets = load_budgets({"*": {"p99_ms": 1}, "<unmatched>": {"p99_ms": 100}})
    assert verdicts(budgets, route("<unmatched>"), route("<other>")) == [
        ("<unmatched>", "p99_ms", "<unmatched>", "pass")
    ]


@pytest.mark.parametrize(
    ("entry", "expected"),
    [
        (route("GET /x", p50=1.0, p99=500.0), "fail"),  # one fail is enough
        (route("GET /x", p50=1.0, p99=5.0), "pass"),
        (route("GET /x", p50=1.0, p99=5.0, mem_samples=0), "pass"),  # pass beats insufficient
        (route("GET /x", count=1), "insufficient"),
        (route("GET /other"), None),
        ({"count": 3}, None),
    ],
)
def test_route_verdict(entry: dict[str, Any], expected: str | None) -> None:
    budgets = load_budgets({"GET /x": {"p50_ms": 10, "p99_ms": 10, "max_mb": 10}})
    assert budgets.route_verdict(entry) == expected


def test_check_covers_many_routes_and_patterns() -> None:
    budgets = load_budgets(
        {"*": {"p99_ms": 100}, "GET /api/*": {"p50_ms": 10, "max_mb": 5},
         "/api/v1/r[0-9]*": {"error_rate": "1%"}, "GET /api/v1/r7": {"max_ms": 1}}
    )  # fmt: skip
    snap = snapshot(*(route(f"GET /api/v1/r{i}", errors=i % 3) for i in range(500)))
    result = budgets.check(snap)  # fills the per-route cache, as the first poll does
    assert len(result["verdicts"]) == 500 * 4 + 1
    # A second check answers from the per-route cache and must agree.
    assert budgets.check(snap) == result


def test_metrics_contract() -> None:
    assert METRICS == (
        "p50_ms", "p90_ms", "p95_ms", "p99_ms", "max_ms", "max_mb", "error_rate",
        "max_queries", "p99_db_ms",
    )  # fmt: skip


@pytest.mark.parametrize(
    ("value", "text"),
    [(100.0, "100"), (43.44, "43.4"), (0.4051, "0.405"), (5.0, "5"), (-152.0, "-152"), (0, "0")],
)
def test_number_text_keeps_the_digits_that_mean_something(value: float, text: str) -> None:
    assert number_text(value) == text
