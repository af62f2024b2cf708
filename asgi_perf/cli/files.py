"""Subcommands on saved profiles: ``flamegraph``, ``merge``. No server needed."""

from __future__ import annotations

import argparse
import json
import pstats
import re
from io import StringIO
from pathlib import Path

from asgi_perf.capture import Capture, FrameId, Stack, combine, pstats_to_stacks
from asgi_perf.cli._common import (
    IO,
    CLIError,
    existing_file,
    format_of,
    read_pstats,
    say_saved,
)
from asgi_perf.cli._exit import EXIT_OK
from asgi_perf.renderers import RENDERERS, NotRenderable, render

_COLLAPSED_LINE = re.compile(r"(.*\S)\s+(\d+(?:\.\d+)?)")
# "function (file:line)" as asgi_perf writes frames; anything else is a bare name.
_COLLAPSED_FRAME = re.compile(r"(.*) \(([^()]*?)(?::(\d+))?\)")


def load_capture(path_text: str) -> Capture:
    """A ``.prof`` (pstats), a ``.collapsed`` (folded stacks) or a store's capture ``.json``."""
    path = existing_file(path_text)
    name = path.name.lower()
    if name.endswith(".prof"):
        return _from_prof(path)
    if name.endswith((".collapsed", ".folded")):
        return _from_collapsed(path)
    if name.endswith(".json") and not name.endswith(".speedscope.json"):
        return _from_capture_json(path)
    raise CLIError(
        f"{path_text}: unsupported file (expected a .prof, a .collapsed "
        "or a capture .json from profile_dir)"
    )


def _from_prof(path: Path) -> Capture:
    raw = read_pstats(path)
    return Capture(
        engine="pstats",
        stacks=pstats_to_stacks(raw),
        # A .prof holds call statistics, not how long the profile ran.
        duration_s=0.0,
        pstats=raw,
        exact_stacks=False,
        meta={"kind": "file", "route": path.name},
    )


def _from_collapsed(path: Path) -> Capture:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError:
        raise CLIError(f"{path}: not a text file of folded stacks") from None
    stacks: dict[Stack, float] = {}
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        match = _COLLAPSED_LINE.fullmatch(line)
        if match is None:
            raise CLIError(f"{path}:{number}: expected 'frame;frame;... COUNT', got {line[:60]!r}")
        stack = tuple(_frame(part) for part in match.group(1).split(";"))
        # Weights are microseconds, as asgi_perf writes them; other tools'
        # sample counts keep their proportions.
        stacks[stack] = stacks.get(stack, 0.0) + float(match.group(2)) / 1_000_000
    if not stacks:
        raise CLIError(f"{path}: no stacks in this file")
    return Capture(
        engine="collapsed",
        stacks=stacks,
        duration_s=0.0,  # folded stacks hold weights, not how long the profile ran
        meta={"kind": "file", "route": path.name},
    )


def _frame(text: str) -> FrameId:
    match = _COLLAPSED_FRAME.fullmatch(text)
    if match is None:
        return FrameId(text, "", 0)
    function, file, line = match.groups()
    return FrameId(function, "" if file == "?" else file, int(line or 0))


def _from_capture_json(path: Path) -> Capture:
    return capture_from_json(path.read_bytes(), str(path), "a capture .json from profile_dir")


def capture_from_json(text: str | bytes, where: str, what: str = "a capture .json") -> Capture:
    """A capture from the text ``Capture.to_json`` wrote, or one line naming ``where``."""
    try:
        return Capture.from_json(json.loads(text))
    except (ValueError, KeyError, TypeError, IndexError, AttributeError) as exc:
        reason = str(exc).split("\n", 1)[0] or type(exc).__name__
        raise CLIError(f"{where}: not {what} ({reason})") from None


def _format_for(output: str) -> str:
    """The renderer format an output file name asks for, longest extension first."""
    fmt = format_of(output)
    if fmt is not None:
        return fmt
    known = ", ".join(sorted(r.file_extension for r in RENDERERS.values()))
    raise CLIError(f"-o {output}: unknown output type (extensions: {known})")


def _write(io: IO, capture: Capture, fmt: str, output: str) -> int:
    try:
        body = render(capture, fmt)
    except NotRenderable as exc:
        raise CLIError(f"-o {output}: {exc}") from None
    Path(output).write_bytes(body)
    say_saved(io, output, len(body))
    return EXIT_OK


def cmd_flamegraph(args: argparse.Namespace, io: IO) -> int:
    capture = load_capture(args.file)
    output = args.output or Path(args.file).name.split(".", 1)[0] + ".svg"
    return _write(io, capture, "svg", output)


def cmd_merge(args: argparse.Namespace, io: IO) -> int:
    fmt = _format_for(args.output)
    files = [existing_file(f) for f in args.files]
    if fmt == "prof" and all(f.name.lower().endswith(".prof") for f in files):
        for f in files:
            read_pstats(f)  # a bad file gets its own one-line error
        # pstats adds .prof files exactly; nothing to convert.
        merged = pstats.Stats(*(str(f) for f in files), stream=StringIO())
        merged.dump_stats(args.output)
        size = Path(args.output).stat().st_size
        say_saved(io, args.output, size, f", {len(files)} profiles merged")
        return EXIT_OK
    capture = combine((load_capture(str(f)) for f in files), {"files": [f.name for f in files]})
    return _write(io, capture, fmt, args.output)
