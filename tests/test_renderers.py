"""Every format from captures of real profiles, opened by the tools that read them."""

from __future__ import annotations

import cProfile
import io
import json
import marshal
import pstats
import random
import re
import socket
import subprocess
import sys
import time
import urllib.parse
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pprof_reader
import pytest
from pyinstrument import Profiler
from pyinstrument.frame import Frame
from pyinstrument.session import Session

from asgi_perf.capture import Capture, FrameId, PstatsDict, Stack, combine, pstats_to_stacks
from asgi_perf.renderers import (
    RENDERERS,
    NotRenderable,
    Renderer,
    UnknownFormat,
    render,
    renderer_for,
)

SVG = "{http://www.w3.org/2000/svg}"
MEDIA_TYPES = {
    "prof": "application/octet-stream",
    "svg": "image/svg+xml",
    "html": "text/html; charset=utf-8",
    "speedscope.json": "application/json",
    "collapsed": "text/plain; charset=utf-8",
    "pb.gz": "application/octet-stream",
    "json": "application/json",
}
COLLAPSED_LINE = re.compile(r"^[^;\n]+(;[^;\n]+)* \d+$")
URL = re.compile(r"https?://[^\s\"'<>)]+")
TOOLTIP = re.compile(r"^.+ \(.+\) \u2014 [\d.]+ m?s, [\d.]+ %$")
ODD_NAME = '<lambda> & "x"'


# -------------------------------------------------------------------- the work


def _square_sum(n: int) -> int:
    total = 0
    for i in range(n):
        total += i * i
    return total


def _busy_work(seconds: float) -> int:
    done = 0
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        done += _square_sum(2_000)
    return done


# --------------------------------------------------------------- the captures


def _stacks_from_tree(frame: Frame, above: Stack, out: dict[Stack, float]) -> None:
    # pyinstrument's tree root is a synthetic "[root]" frame above the real ones.
    here = above if frame.identifier == "[root]" else (*above, _frame_id(frame))
    own = frame.time - sum(child.time for child in frame.children)
    if own > 0 and here:
        out[here] = out.get(here, 0.0) + own
    for child in frame.children:
        _stacks_from_tree(child, here, out)


def _frame_id(frame: Frame) -> FrameId:
    return FrameId(frame.function, frame.file_path or "", frame.line_no or 0)


def capture_from_pyinstrument_session(session: Session) -> Capture:
    stacks: dict[Stack, float] = {}
    root = session.root_frame()
    assert root is not None, "the profile took no samples"
    _stacks_from_tree(root, (), stacks)
    return Capture(
        engine="pyinstrument",
        stacks=stacks,
        duration_s=session.duration,
        session=session.to_json(),
        meta={"route": "/work", "method": "GET", "kind": "request", "samples": len(stacks)},
    )


def _pyinstrument_capture() -> Capture:
    profiler = Profiler(interval=0.001)
    profiler.start()
    _busy_work(0.15)
    return capture_from_pyinstrument_session(profiler.stop())


def _cprofile_capture() -> Capture:
    prof = cProfile.Profile()
    started = time.perf_counter()
    prof.runcall(_busy_work, 0.05)
    stats: PstatsDict = pstats.Stats(prof).stats  # type: ignore[attr-defined]
    return Capture(
        engine="cprofile",
        stacks=pstats_to_stacks(stats),
        duration_s=time.perf_counter() - started,
        pstats=stats,
        exact_stacks=False,
        meta={"route": "/work", "kind": "request"},
    )


@pytest.fixture(scope="module")
def captures() -> dict[str, Capture]:
    sampled, traced, traced_again = (
        _pyinstrument_capture(),
        _cprofile_capture(),
        _cprofile_capture(),
    )
    return {
        "pyinstrument": sampled,
        "cprofile": traced,
        # Two engines: no pstats to add, derived from the merged stacks.
        "merged-mixed": combine([sampled, traced], {"route": "/work"}),
        # Both with pstats: the .prof adds them up.
        "merged-cprofile": combine([traced, traced_again], {"route": "/work"}),
    }


KINDS = ["pyinstrument", "cprofile", "merged-mixed", "merged-cprofile"]
FORMATS = sorted(RENDERERS)


def _odd_capture() -> Capture:
    """Names carrying everything a format could choke on."""
    odd = FrameId(ODD_NAME, '/srv/a<b>&"c"/app.py', 3)
    script = FrameId("</script><script>alert(1)</script>", "/srv/x.py", 4)
    separators = FrameId("semi;colon\nnew line", "/srv/odd;dir/x.py", 5)
    return Capture(
        engine="pyinstrument",
        stacks={(odd,): 0.25, (odd, script): 0.5, (odd, separators): 0.25},
        duration_s=1.0,
        meta={"route": '/<odd> & "route"', "kind": "request"},
    )


def _tree_nodes(capture: Capture, min_share: float = 0.001) -> int:
    """Path prefixes at least ``min_share`` of the time: the flame graph's frames."""
    prefixes: dict[Stack, float] = {}
    for stack, seconds in capture.stacks.items():
        for depth in range(1, len(stack) + 1):
            prefixes[stack[:depth]] = prefixes.get(stack[:depth], 0.0) + seconds
    floor = capture.total_s * min_share
    return sum(1 for seconds in prefixes.values() if seconds >= floor)


# ------------------------------------------------------------ every renderer


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("fmt", FORMATS)
def test_every_format_renders_every_capture(
    fmt: str, kind: str, captures: dict[str, Capture]
) -> None:
    renderer = renderer_for(fmt)
    assert isinstance(renderer, Renderer)
    assert renderer.format == fmt
    assert renderer.file_extension == f".{fmt}"
    assert renderer.media_type == MEDIA_TYPES[fmt]
    body = render(captures[kind], fmt)
    assert isinstance(body, bytes) and body


def test_formats_are_the_documented_ones() -> None:
    assert set(RENDERERS) == set(MEDIA_TYPES)


def test_unknown_format_names_the_known_ones(captures: dict[str, Capture]) -> None:
    with pytest.raises(UnknownFormat) as info:
        render(captures["cprofile"], "pdf")
    assert isinstance(info.value, ValueError)
    assert "'pdf'" in str(info.value)
    for fmt in RENDERERS:
        assert fmt in str(info.value)


# --------------------------------------------------------------------- .prof


@pytest.mark.parametrize("kind", KINDS)
def test_prof_loads_with_pstats(kind: str, captures: dict[str, Capture], tmp_path: Path) -> None:
    path = tmp_path / "p.prof"
    path.write_bytes(render(captures[kind], "prof"))
    out = io.StringIO()
    stats = pstats.Stats(str(path), stream=out)
    stats.sort_stats("cumulative").print_stats()
    stats.print_callers()
    names = {func[2] for func in stats.stats}  # type: ignore[attr-defined]
    assert {"_busy_work", "_square_sum"} <= names
    assert "_square_sum" in out.getvalue()


def test_prof_of_merged_cprofile_adds_the_call_counts(captures: dict[str, Capture]) -> None:
    merged = captures["merged-cprofile"]
    written = marshal.loads(render(merged, "prof"))
    assert written == merged.pstats
    (key,) = (k for k in written if k[2] == "_busy_work")
    assert written[key][:2] == (2, 2)


def test_prof_of_an_empty_capture_is_not_renderable() -> None:
    with pytest.raises(NotRenderable):
        render(Capture(engine="pyinstrument", stacks={}, duration_s=0.001), "prof")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture
def snakeviz_server(tmp_path: Path) -> Iterator[Any]:
    procs: list[subprocess.Popen[bytes]] = []

    def serve(path: Path) -> str:
        port = _free_port()
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "snakeviz",
                "--server",
                "-p",
                str(port),
                "-H",
                "127.0.0.1",
                path,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        procs.append(proc)
        return f"http://127.0.0.1:{port}"

    yield serve
    for proc in procs:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["pyinstrument", "cprofile"])
def test_prof_opens_in_snakeviz(
    kind: str, captures: dict[str, Capture], tmp_path: Path, snakeviz_server: Any
) -> None:
    path = (tmp_path / f"{kind}.prof").resolve()
    path.write_bytes(render(captures[kind], "prof"))
    base = snakeviz_server(path)
    url = f"{base}/snakeviz/{urllib.parse.quote(str(path), safe='')}"
    deadline = time.monotonic() + 20
    while True:
        try:
            response = httpx.get(url, timeout=5)
            break
        except httpx.TransportError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)
    assert response.status_code == 200
    # snakeviz embeds the call graph it read from the file in its page.
    assert "_square_sum" in response.text


# ---------------------------------------------------------------------- .svg


def _frames(svg: bytes) -> list[ET.Element]:
    root = ET.fromstring(svg)
    assert root.tag == f"{SVG}svg"
    group = root.find(f"{SVG}g[@id='f']")
    assert group is not None
    return list(group)


@pytest.mark.parametrize("kind", KINDS)
def test_svg_has_one_frame_per_tree_node(kind: str, captures: dict[str, Capture]) -> None:
    capture = captures[kind]
    svg = render(capture, "svg")
    frames = _frames(svg)
    assert len(frames) == _tree_nodes(capture)
    tooltips = []
    for g in frames:
        assert g.tag == f"{SVG}g"
        assert len(g.findall(f"{SVG}rect")) == 1
        title = g.find(f"{SVG}title")
        assert title is not None and title.text is not None
        assert TOOLTIP.match(title.text), title.text
        tooltips.append(title.text)
    assert any(t.startswith("_square_sum (") for t in tooltips)
    # The widest frame is a root, and a root that covers everything says 100 %.
    if len(capture.stacks) and len({s[0] for s in capture.stacks}) == 1:
        assert tooltips[0].endswith(", 100.0 %")


def test_svg_is_self_contained_and_interactive(captures: dict[str, Capture]) -> None:
    svg = render(captures["pyinstrument"], "svg")
    root = ET.fromstring(svg)
    script = root.find(f"{SVG}script")
    assert script is not None and script.text is not None
    for feature in ("addEventListener('click'", "RegExp", "prompt", "Escape", "mouseover"):
        assert feature in script.text
    text = svg.decode()
    assert set(URL.findall(text)) <= {"http://www.w3.org/2000/svg"}
    assert "href" not in text and "<image" not in text and "@import" not in text
    # No per-frame styles: colours come from a handful of CSS classes.
    assert 'style="' not in text
    heading = root.find(f"{SVG}text[@id='t']")
    assert heading is not None and heading.text is not None
    assert heading.text.startswith("GET /work \u2014 request, pyinstrument")


def test_svg_colours_app_and_library_code_apart() -> None:
    app = FrameId("handler", "/srv/app/views.py", 1)
    lib = FrameId("handler", "/venv/lib/python3.11/site-packages/starlette/routing.py", 2)
    std = FrameId("run", "/usr/lib/python3.11/asyncio/events.py", 3)
    capture = Capture(engine="x", stacks={(lib, app): 1.0, (std,): 1.0}, duration_s=2)
    classes = {}
    for g in _frames(render(capture, "svg")):
        title, rect = g.find(f"{SVG}title"), g.find(f"{SVG}rect")
        assert title is not None and title.text and rect is not None
        classes[title.text.split(" \u2014 ")[0]] = rect.get("class", "")
    in_app = classes["handler (/srv/app/views.py:1)"]
    in_lib = classes["handler (starlette/routing.py:2)"]
    in_std = classes["run (asyncio/events.py:3)"]
    assert (in_app[0], in_lib[0], in_std[0]) == ("a", "l", "l")
    # The hue says where the code lives; the shade follows the function's name.
    assert in_app[1:] == in_lib[1:]


def test_svg_of_an_empty_capture_says_so() -> None:
    svg = render(Capture(engine="pyinstrument", stacks={}, duration_s=0.001), "svg")
    assert _frames(svg) == []
    assert b"No samples" in svg


def test_svg_of_a_busy_window_stays_small() -> None:
    capture = _busy_window(stacks=20_000, depth=40)
    started = time.perf_counter()
    svg = render(capture, "svg")
    elapsed = time.perf_counter() - started
    # Timing is measured in benchmarks/, not asserted here; shown for the record.
    print(f"\n20 000-stack flame graph: {elapsed:.3f} s, {len(svg) / 1e6:.2f} MB")
    assert len(svg) <= 2_000_000
    frames = _frames(svg)
    assert 0 < len(frames) <= 8_000


def test_svg_keeps_a_tree_when_it_drops_frames() -> None:
    # 900 paths of equal weight, 40 deep: far more frames than the budget.
    stacks: dict[Stack, float] = {}
    for path in range(900):
        stacks[tuple(FrameId(f"f{path}_{d}", f"/srv/m{d}.py", d + 1) for d in range(40))] = 1.0
    frames = _frames(render(Capture(engine="x", stacks=stacks, duration_s=900), "svg"))
    assert len(frames) == 8_000
    ys: dict[float, list[ET.Element]] = {}
    for g in frames:
        rect = g.find(f"{SVG}rect")
        assert rect is not None
        ys.setdefault(float(rect.get("y", 0)), []).append(g)
    # Whole rows from the root down: every frame kept has its caller kept.
    rows = [len(ys[y]) for y in sorted(ys)]
    assert rows[:-1] == [900] * (len(rows) - 1)


def _busy_window(stacks: int, depth: int) -> Capture:
    """A minute of a busy app: skewed call paths over a few thousand functions."""
    rng = random.Random(7)
    funcs = [
        FrameId(
            f"handler_{i}",
            f"/srv/venv/lib/python3.11/site-packages/lib{i % 50}/m{i % 7}.py"
            if i % 2
            else f"/srv/app/views_{i % 20}.py",
            10 + i,
        )
        for i in range(3_000)
    ]
    out: dict[Stack, float] = {}
    while len(out) < stacks:
        n = rng.randint(depth // 2, depth)
        stack = tuple(funcs[min(int(rng.expovariate(1.0) * 3) + 7 * k, 2_999)] for k in range(n))
        out[stack] = out.get(stack, 0.0) + rng.expovariate(1_000.0)
    return Capture(engine="pyinstrument", stacks=out, duration_s=60.0, meta={"kind": "window"})


# ----------------------------------------------------------- .speedscope.json


@pytest.mark.parametrize("kind", KINDS)
def test_speedscope_file_format(kind: str, captures: dict[str, Capture]) -> None:
    capture = captures[kind]
    doc = json.loads(render(capture, "speedscope.json"))
    assert doc["$schema"] == "https://www.speedscope.app/file-format-schema.json"
    assert doc["activeProfileIndex"] == 0
    assert doc["exporter"].startswith("asgi_perf ")
    assert doc["name"]
    frames = doc["shared"]["frames"]
    assert all(isinstance(f["name"], str) for f in frames)
    assert "_square_sum" in {f["name"] for f in frames}
    (profile,) = doc["profiles"]
    assert profile["type"] == "sampled" and profile["unit"] == "seconds"
    assert profile["startValue"] == 0
    assert len(profile["samples"]) == len(profile["weights"])
    assert all(0 <= i < len(frames) for sample in profile["samples"] for i in sample)
    assert sum(profile["weights"]) == pytest.approx(capture.total_s)
    assert profile["endValue"] == pytest.approx(capture.total_s)
    # Root first, as in the capture.
    first_stack = next(iter(capture.stacks))
    assert [frames[i]["name"] for i in profile["samples"][0]] == [f.function for f in first_stack]


# ---------------------------------------------------------------- .json


@pytest.mark.parametrize("kind", KINDS)
def test_capture_json_reads_back_as_the_same_capture(
    kind: str, captures: dict[str, Capture]
) -> None:
    capture = captures[kind]
    body = render(capture, "json")
    again = Capture.from_json(json.loads(body))
    assert again.stacks == capture.stacks  # weights exact, not rounded like .collapsed
    assert again.pstats == capture.pstats  # the engine's own call counts survive
    assert (again.engine, again.duration_s, again.exact_stacks) == (
        capture.engine,
        capture.duration_s,
        capture.exact_stacks,
    )
    # As JSON has them (lists for tuples): pyinstrument's viewer reads them so.
    assert again.session == json.loads(json.dumps(capture.session))
    assert again.meta == json.loads(json.dumps(capture.meta))
    assert body.isascii()


# ---------------------------------------------------------------- .collapsed


@pytest.mark.parametrize("kind", KINDS)
def test_collapsed_lines(kind: str, captures: dict[str, Capture]) -> None:
    capture = captures[kind]
    lines = render(capture, "collapsed").decode().splitlines()
    assert lines
    for line in lines:
        assert COLLAPSED_LINE.match(line), line
    micros = sum(int(line.rsplit(" ", 1)[1]) for line in lines)
    assert micros == pytest.approx(capture.total_s * 1e6, abs=len(capture.stacks))
    busy = [line for line in lines if "_square_sum (" in line]
    assert busy
    # Root first: the caller comes before what it called.
    assert all(line.index("_busy_work (") < line.index("_square_sum (") for line in busy)


# --------------------------------------------------------------------- .html


def test_html_is_pyinstruments_viewer(captures: dict[str, Capture]) -> None:
    page = render(captures["pyinstrument"], "html").decode()
    assert page.lstrip().startswith("<!DOCTYPE html>")
    assert "pyinstrumentHTMLRenderer.render(" in page and "const sessionData = " in page
    assert "_square_sum" in page and "_busy_work" in page
    _assert_offline(page)


@pytest.mark.parametrize("kind", ["cprofile", "merged-mixed"])
def test_html_without_a_session_is_rebuilt_from_stacks(
    kind: str, captures: dict[str, Capture]
) -> None:
    capture = captures[kind]
    assert capture.session is None
    page = render(capture, "html").decode()
    data = page.split("const sessionData = ", 1)[1].split(";\n", 1)[0]
    session = json.loads(data)
    assert session["frame_tree"] is not None
    assert "_square_sum" in json.dumps(session["frame_tree"])
    assert session["session"]["duration"] == pytest.approx(capture.duration_s)
    _assert_offline(page)


def test_html_with_an_unreadable_session_is_not_renderable() -> None:
    capture = Capture(engine="pyinstrument", stacks={}, duration_s=1, session={"bogus": 1})
    with pytest.raises(NotRenderable, match="pyinstrument session"):
        render(capture, "html")


def _assert_offline(page: str) -> None:
    """Self-contained: nothing fetched when the page opens."""
    assert "<script src" not in page and "<link" not in page
    assert set(URL.findall(page)) <= {"http://www.w3.org/2000/svg"}


# ------------------------------------------------------------------ escaping


@pytest.mark.parametrize("fmt", FORMATS)
def test_odd_names_stay_intact_and_harmless(fmt: str, tmp_path: Path) -> None:
    capture = _odd_capture()
    body = render(capture, fmt)
    if fmt == "svg":
        titles = [g.find(f"{SVG}title").text for g in _frames(body)]  # type: ignore[union-attr]
        assert any(t and t.startswith(ODD_NAME + " (") for t in titles)
        assert "semi;colon\nnew line (" in "".join(t or "" for t in titles)
        heading = ET.fromstring(body).find(f"{SVG}title")
        assert heading is not None
        assert (
            heading.text
            == '/<odd> & "route" \u2014 request, pyinstrument, 1.00 s wall, 1.00 s profiled'
        )
    elif fmt == "collapsed":
        lines = body.decode().splitlines()
        assert all(COLLAPSED_LINE.match(line) for line in lines), lines
        assert any(line.startswith(ODD_NAME + " (") for line in lines)
    elif fmt == "speedscope.json":
        names = {f["name"] for f in json.loads(body)["shared"]["frames"]}
        assert ODD_NAME in names and "semi;colon\nnew line" in names
    elif fmt == "prof":
        path = tmp_path / "odd.prof"
        path.write_bytes(body)
        names = {k[2] for k in pstats.Stats(str(path)).stats}  # type: ignore[attr-defined]
        assert ODD_NAME in names
    elif fmt == "json":
        names = {f.function for stack in Capture.from_json(json.loads(body)).stacks for f in stack}
        assert ODD_NAME in names and "semi;colon\nnew line" in names
    elif fmt == "pb.gz":
        profile = pprof_reader.read(body)
        names = {f.name for f in profile.functions.values()}
        assert ODD_NAME in names and "semi;colon\nnew line" in names
        files = {f.filename for f in profile.functions.values()}
        assert '/srv/a<b>&"c"/app.py' in files
    else:
        page = body.decode()
        plain = Capture(engine="x", stacks={(FrameId("f", "x.py", 1),): 1.0}, duration_s=1)
        # A name holding </script> must not end pyinstrument's data script early.
        assert page.count("</script>") == render(plain, fmt).decode().count("</script>")
        assert "\\u003c/script>\\u003cscript>alert(1)" in page


@pytest.mark.parametrize(
    ("meta", "expected"),
    [
        ({"kind": "request", "method": "GET", "route": "GET /items/{id}"}, "GET /items/{id}"),
        ({"kind": "request", "method": "GET", "route": "/items/{id}"}, "GET /items/{id}"),
        ({"kind": "window", "method": "WINDOW", "route": "<process>"}, "the whole process"),
        ({"kind": "lifespan", "method": "LIFESPAN", "route": "<process>"}, "the whole process"),
    ],
)
def test_svg_heading_names_the_route_once(meta: dict[str, str], expected: str) -> None:
    frame = FrameId("work", "/srv/app.py", 1)
    capture = Capture(engine="yappi", stacks={(frame,): 0.5}, duration_s=0.5, meta=meta)
    heading = ET.fromstring(render(capture, "svg")).find(f"{SVG}title")
    assert heading is not None and heading.text is not None
    assert heading.text.startswith(f"{expected} \u2014 {meta['kind']}, yappi"), heading.text
