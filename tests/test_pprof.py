"""``.pb.gz``: read back by ``go tool pprof`` and by a reader written from profile.proto."""

from __future__ import annotations

import cProfile
import gzip
import os
import random
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from pprof_reader import Profile, read

from asgi_perf.capture import Capture, FrameId, Stack, combine
from asgi_perf.cli import main
from asgi_perf.cli._common import format_of
from asgi_perf.engines.cprofile_impl import CProfileEngine
from asgi_perf.engines.pyinstrument_impl import PyinstrumentEngine
from asgi_perf.engines.yappi_impl import YappiEngine
from asgi_perf.labels import (
    IDLE,
    LOOP_THREAD,
    WORKER_THREAD,
    is_label,
    request_frame,
    route_frame,
    tag_frame,
)
from asgi_perf.renderers import NotRenderable, render

GO = shutil.which("go")
needs_go = pytest.mark.skipif(
    GO is None,
    reason="go is not installed (apt-get install golang-go): only the Python reader checks .pb.gz",
)

APP = FrameId("<module>", "/srv/app.py", 1)
HANDLER = FrameId("Handler.get", "/srv/app.py", 10)
QUERY = FrameId("<lambda>", "/srv/db.py", 5)
SLEEP = FrameId("sync_work", "/srv/app.py", 20)


def _burn(seconds: float) -> int:
    done = 0
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        done += sum(i * i for i in range(500))
    return done


def _sampler_capture() -> Capture:
    """What the sampler records: label frames at the root of every stack."""
    alpha = (route_frame("GET /alpha"), tag_frame("nightly"), request_frame("abc"), LOOP_THREAD)
    beta = (route_frame("GET /beta"), WORKER_THREAD)
    return Capture(
        engine="sampler",
        stacks={
            (*alpha, APP, HANDLER): 0.2,
            (*alpha, APP, HANDLER, QUERY): 0.1,
            (*beta, APP, SLEEP): 0.3,
            (route_frame(IDLE), LOOP_THREAD): 0.4,
        },
        duration_s=1.5,
        meta={"kind": "window", "route": "<process>", "start": 1_700_000_000.25},
    )


def _window(engine: PyinstrumentEngine | CProfileEngine | YappiEngine) -> Capture:
    recording = engine.start_window(0.001)
    assert recording is not None
    _burn(0.05)
    return recording.stop()


def _stacks_by_names(profile: Profile) -> dict[tuple[str, ...], int]:
    """Each sample as root-first function names, with its value."""
    out: dict[tuple[str, ...], int] = {}
    for sample in profile.samples:
        names = tuple(reversed(profile.names(sample)))
        out[names] = out.get(names, 0) + sample.values[0]
    return out


# ------------------------------------------------------- the Python reader


def test_sampler_labels_become_sample_labels_not_frames() -> None:
    profile = read(render(_sampler_capture(), "pb.gz"))
    assert profile.sample_types == [("wall", "nanoseconds")]
    got = sorted(
        (sorted((k, tuple(v)) for k, v in s.labels.items()), profile.names(s), s.values)
        for s in profile.samples
    )
    alpha = [("request", ("abc",)), ("route", ("GET /alpha",)), ("tag", ("nightly",))]
    loop, worker = ("thread", ("loop",)), ("thread", ("worker",))
    assert got == sorted(
        [
            # Idle has no code: its route stays as the one frame, so the time shows.
            ([("route", ("<idle>",)), loop], ["<idle>"], [400_000_000]),
            ([*alpha, loop], ["<lambda>", "Handler.get", "<module>"], [100_000_000]),
            ([*alpha, loop], ["Handler.get", "<module>"], [200_000_000]),
            ([("route", ("GET /beta",)), worker], ["sync_work", "<module>"], [300_000_000]),
        ]
    )
    files = {f.filename for f in profile.functions.values()}
    assert files == {"/srv/app.py", "/srv/db.py", "<route>"}
    assert "<thread>" not in files and "<tag>" not in files and "<request>" not in files


def test_header_fields() -> None:
    capture = _sampler_capture()
    capture.meta["interval_s"] = 0.005
    profile = read(render(capture, "pb.gz"))
    assert profile.time_nanos == 1_700_000_000_250_000_000
    assert profile.duration_nanos == 1_500_000_000
    assert profile.period_type == ("wall", "nanoseconds")
    assert profile.period == 5_000_000
    assert profile.comments[0].startswith("asgi_perf ")
    assert "engine sampler" in profile.comments[0]
    assert "window <process>" in profile.comments
    # Without a start or an interval those fields are left out, not zero-filled lies.
    bare = read(render(Capture(engine="x", stacks={(APP,): 1.0}, duration_s=2.0), "pb.gz"))
    assert (bare.time_nanos, bare.period, bare.period_type) == (0, 0, None)
    assert bare.duration_nanos == 2_000_000_000


def test_one_location_and_function_per_frame() -> None:
    profile = read(render(_sampler_capture(), "pb.gz"))
    assert len(profile.strings) == len(set(profile.strings))
    assert len(profile.locations) == len(profile.functions) == 5  # 4 frames and <idle>
    # Every location: one line, in mapping 1, which says it is symbolized.
    assert all(len(lines) == 1 for lines in profile.locations.values())
    assert set(profile.location_mappings.values()) == {1}
    (mapping,) = profile.mappings
    assert {n: v for n, v in mapping.items() if n in (1, 7, 8, 9)} == {
        1: [1],
        7: [1],
        8: [1],
        9: [1],
    }
    seen = set()
    for lines in profile.locations.values():
        ((fid, line),) = lines
        f = profile.functions[fid]
        assert f.system_name == ""  # pprof would "demangle" <module> to nothing
        assert line == f.start_line
        seen.add(FrameId(f.name, f.filename, f.start_line))
    assert seen == {APP, HANDLER, QUERY, SLEEP, route_frame(IDLE)}


def test_a_real_capture_comes_out_leaf_first_in_nanoseconds() -> None:
    capture = _window(PyinstrumentEngine())
    profile = read(render(capture, "pb.gz"))
    expected: dict[tuple[str, ...], int] = {}
    for stack, seconds in capture.stacks.items():
        # pyinstrument's thread pseudo-frames are labels too.
        names = tuple(f.function for f in stack if not is_label(f))
        expected[names] = expected.get(names, 0) + round(seconds * 1e9)
    assert _stacks_by_names(profile) == {k: v for k, v in expected.items() if v > 0}
    assert {t for s in profile.samples for t in s.labels["thread"]} == {"MainThread"}
    # The leaf comes first: what _burn called, then _burn, then its callers.
    burning = [profile.names(s)[:3] for s in profile.samples if "_burn" in profile.names(s)]
    assert ["<genexpr>", "_burn", "_window"] in burning
    assert profile.duration_nanos == round(capture.duration_s * 1e9)
    interval = capture.meta.get("interval_s")
    if interval:
        assert profile.period == round(interval * 1e9)


@pytest.mark.parametrize("clock", ["cpu", "wall"])
def test_yappi_says_its_clock(clock: str) -> None:
    capture = _window(YappiEngine(clock=clock))
    assert capture.meta.get("clock") == clock
    profile = read(render(capture, "pb.gz"))
    assert profile.sample_types == [(clock, "nanoseconds")]
    assert any("_burn" in profile.names(s) for s in profile.samples)
    # yappi's stacks come from its call graph, and the file says so.
    assert any("rebuilt from call statistics" in c for c in profile.comments)


def test_merged_captures_render() -> None:
    sampled, traced = _window(PyinstrumentEngine()), _window(CProfileEngine())
    merged = combine([sampled, traced, _sampler_capture()], {"route": "/work"})
    profile = read(render(merged, "pb.gz"))
    total = sum(s.values[0] for s in profile.samples)
    assert total == pytest.approx(merged.total_s * 1e9, abs=len(merged.stacks))
    assert any("_burn" in profile.names(s) for s in profile.samples)
    routes = {r for s in profile.samples for r in s.labels.get("route", ())}
    assert routes == {"GET /alpha", "GET /beta", "<idle>"}
    assert "merged /work" in profile.comments


def test_empty_capture_is_not_renderable() -> None:
    with pytest.raises(NotRenderable, match="no samples"):
        render(Capture(engine="pyinstrument", stacks={}, duration_s=0.001), "pb.gz")
    # Time that rounds to no nanosecond is no sample either.
    with pytest.raises(NotRenderable):
        render(Capture(engine="x", stacks={(APP,): 1e-12, (): 1.0}, duration_s=1), "pb.gz")


def test_the_same_capture_gives_the_same_bytes() -> None:
    capture = _sampler_capture()
    body = render(capture, "pb.gz")
    assert render(capture, "pb.gz") == body
    # gzip's header holds no time stamp (bytes 4-7, the mtime), so no second differs.
    assert body[:2] == b"\x1f\x8b" and body[4:8] == bytes(4)


def test_a_busy_window_renders() -> None:
    rng = random.Random(7)
    funcs = [FrameId(f"handler_{i}", f"/srv/app/views_{i % 20}.py", 10 + i) for i in range(3_000)]
    stacks: dict[Stack, float] = {}
    while len(stacks) < 20_000:
        n = rng.randint(20, 40)
        stack = tuple(funcs[min(int(rng.expovariate(1.0) * 3) + 7 * k, 2_999)] for k in range(n))
        stacks[stack] = stacks.get(stack, 0.0) + rng.expovariate(1_000.0)
    capture = Capture(engine="pyinstrument", stacks=stacks, duration_s=60.0)
    started = time.perf_counter()
    body = render(capture, "pb.gz")
    elapsed = time.perf_counter() - started
    # Timing is measured in benchmarks/, not asserted here; shown for the record.
    print(f"\n20 000-stack pprof: {elapsed:.3f} s, {len(body) / 1e6:.2f} MB gzipped")
    profile = read(body)
    assert len(profile.samples) == 20_000
    assert len(profile.locations) == len({f for s in stacks for f in s})


# ------------------------------------------------------------------- the CLI


def test_the_cli_takes_pb_gz_from_the_output_name(tmp_path: Path) -> None:
    assert format_of("load.pb.gz") == "pb.gz"
    assert format_of("LOAD.PB.GZ") == "pb.gz"
    assert format_of("load.gz") is None
    prof = cProfile.Profile()
    prof.runcall(_burn, 0.02)
    prof.dump_stats(tmp_path / "a.prof")
    out = tmp_path / "merged.pb.gz"
    assert main(["merge", str(tmp_path / "a.prof"), str(tmp_path / "a.prof"), "-o", str(out)]) == 0
    profile = read(out.read_bytes())
    assert any("_burn" in profile.names(s) for s in profile.samples)


# ------------------------------------------------------------ go tool pprof


def _go_pprof(tmp_path: Path, *args: str) -> str:
    assert GO is not None
    env = {
        **os.environ,
        "HOME": str(tmp_path),
        "PPROF_TMPDIR": str(tmp_path),
        # Never reach for another toolchain over the network.
        "GOTOOLCHAIN": "local",
    }
    done = subprocess.run(
        [GO, "tool", "pprof", *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
        env=env,
    )
    assert done.returncode == 0, done.stderr
    # pprof complains on stderr about what it cannot use; it must have nothing to say.
    said = [line for line in done.stderr.splitlines() if not line.startswith("Generating report")]
    assert said == [], done.stderr
    return done.stdout


@needs_go
@pytest.mark.slow
def test_go_tool_pprof_reads_a_sampler_window(tmp_path: Path) -> None:
    path = tmp_path / "window.pb.gz"
    path.write_bytes(render(_sampler_capture(), "pb.gz"))

    top = _go_pprof(tmp_path, "-top", str(path))
    assert "Type: wall" in top
    assert "Duration: 1.50s, Total samples = 1000ms (66.67%)" in top
    table = top.split(" cum%\n", 1)[1].splitlines()
    rows = {line.split()[-1]: line.split() for line in table}
    # Python's <module> and <lambda> keep their names; labels are no frames.
    assert set(rows) == {"<idle>", "sync_work", "Handler.get", "<lambda>", "<module>"}
    assert rows["<lambda>"][0] == "100ms" and rows["<module>"][3] == "600ms"
    assert rows["Handler.get"][0] == "200ms" and rows["Handler.get"][3] == "300ms"
    assert rows["<idle>"][0] == "400ms"

    beta = _go_pprof(tmp_path, "-top", "-tagfocus", "route=GET /beta", str(path))
    assert "Showing nodes accounting for 300ms, 30.00% of 1000ms total" in beta
    assert "sync_work" in beta and "Handler.get" not in beta

    tags = _go_pprof(tmp_path, "-tags", str(path))
    for expected in ("route:", "GET /alpha", "thread:", "loop", "worker", "tag:", "nightly"):
        assert expected in tags

    raw = _go_pprof(tmp_path, "-raw", str(path))
    assert "Time: 2023-11-14 22:13:20.25 +0000 UTC" in raw
    # Leaf first: <lambda>'s sample lists it before Handler.get and <module>.
    locations = dict(
        (int(line.split(":")[0]), line.split()[3])
        for line in raw.split("Locations\n", 1)[1].split("Mappings", 1)[0].splitlines()
    )
    lambda_sample = next(line for line in raw.splitlines() if line.strip().startswith("100000000:"))
    names = [locations[int(i)] for i in lambda_sample.split(":", 1)[1].split()]
    assert names == ["<lambda>", "Handler.get", "<module>"]


@needs_go
@pytest.mark.slow
def test_go_tool_pprof_reads_real_engine_captures(tmp_path: Path) -> None:
    cpu = tmp_path / "cpu.pb.gz"
    cpu.write_bytes(render(_window(YappiEngine(clock="cpu")), "pb.gz"))
    merged = tmp_path / "merged.pb.gz"
    parts = [_window(PyinstrumentEngine()), _window(CProfileEngine())]
    merged.write_bytes(render(combine(parts), "pb.gz"))
    top = _go_pprof(tmp_path, "-top", str(cpu))
    assert "Type: cpu" in top and "_burn" in top
    top = _go_pprof(tmp_path, "-top", str(merged))
    assert "Type: wall" in top and "_burn" in top
    # pprof's own format: what it writes back it reads the same.
    again = tmp_path / "again.pb.gz"
    _go_pprof(tmp_path, "-proto", "-output", str(again), str(merged))
    assert gzip.decompress(again.read_bytes())
    assert _stacks_by_names(read(again.read_bytes())) == _stacks_by_names(read(merged.read_bytes()))
