"""``.pb.gz``: pprof, for ``go tool pprof``, Grafana Pyroscope and cloud profilers.

The file is a gzipped ``perftools.profiles.Profile`` message (google/pprof,
``proto/profile.proto``). It is encoded here by hand rather than with
Google's ``protobuf`` runtime and a generated ``profile_pb2.py``: the few
messages written need two wire types (varints and length-delimited bytes),
which take some twenty lines, while ``protobuf`` would be a new runtime
dependency (every profile has this format, so it cannot be an optional
extra) whose generated code must match the installed runtime's major
version, a well-known source of conflicts in the apps that would install
us. No maintained PyPI package ships pprof's schema on its own. The output
is checked by ``go tool pprof`` itself in the tests.

pprof lists a sample's locations leaf first, the reverse of a capture's
stacks. The sampler's label frames (route, tag, request, thread) become
sample labels, so ``go tool pprof -tagfocus route=...`` selects a route and
the call graph holds code only.
"""

from __future__ import annotations

import gzip

from asgi_perf._version import __version__
from asgi_perf.capture import Capture, FrameId
from asgi_perf.labels import LABEL_FILES, ROUTE_FILE, is_label
from asgi_perf.renderers.base import NotRenderable

_NS = 1_000_000_000
_MASK64 = (1 << 64) - 1

# Field numbers of profile.proto.
_PROFILE_SAMPLE_TYPE, _PROFILE_SAMPLE, _PROFILE_MAPPING = 1, 2, 3
_PROFILE_LOCATION, _PROFILE_FUNCTION = 4, 5
_PROFILE_STRING_TABLE, _PROFILE_TIME, _PROFILE_DURATION = 6, 9, 10
_PROFILE_PERIOD_TYPE, _PROFILE_PERIOD, _PROFILE_COMMENT = 11, 12, 13
_SAMPLE_LOCATION_ID, _SAMPLE_VALUE, _SAMPLE_LABEL = 1, 2, 3
_LABEL_KEY, _LABEL_STR = 1, 2
_MAPPING_ID, _MAPPING_HAS_FUNCTIONS, _MAPPING_HAS_FILENAMES, _MAPPING_HAS_LINE_NUMBERS = 1, 7, 8, 9
_LOCATION_ID, _LOCATION_MAPPING_ID, _LOCATION_LINE = 1, 2, 4
_LINE_FUNCTION_ID, _LINE_LINE = 1, 2
_FUNCTION_ID, _FUNCTION_NAME, _FUNCTION_FILENAME, _FUNCTION_START_LINE = 1, 2, 4, 5
_VALUE_TYPE_TYPE, _VALUE_TYPE_UNIT = 1, 2

# "<route>" -> "route": the label keys, as pprof's -tagfocus spells them.
_LABEL_KEYS = {file: file.strip("<>") for file in LABEL_FILES}


class PprofRenderer:
    """One sample per distinct stack, its value the stack's time in nanoseconds.

    The sample type is ``wall`` (``cpu`` for yappi on its CPU clock); the
    period is the sampling interval when the engine has one. A location is a
    frame and a function a (function, file, line), one each.
    """

    format = "pb.gz"
    file_extension = ".pb.gz"
    # What Go's net/http/pprof serves its profiles as.
    media_type = "application/octet-stream"

    def render(self, capture: Capture) -> bytes:
        strings = _Strings()
        locations: dict[FrameId, int] = {}
        # A location id's packed varint, made once: a busy window repeats
        # each id hundreds of thousands of times.
        ids: list[bytes] = [b""]
        samples = bytearray()
        for stack, seconds in capture.stacks.items():
            nanos = round(seconds * _NS)
            if nanos <= 0 or not stack:
                continue
            start = 0
            while start < len(stack) and is_label(stack[start]):
                start += 1
            # Labels alone (the loop idle): the route keeps the time visible.
            frames = stack[start:] or stack[:1]
            packed = bytearray()
            for frame in reversed(frames):
                loc = locations.get(frame)
                if loc is None:
                    loc = locations[frame] = len(ids)
                    ids.append(_varint(loc))
                packed += ids[loc]
            sample = bytearray()
            _field_bytes(sample, _SAMPLE_LOCATION_ID, packed)
            _field_bytes(sample, _SAMPLE_VALUE, _varint(nanos))
            for frame in stack[:start]:
                _field_bytes(sample, _SAMPLE_LABEL, _label(frame, strings))
            _field_bytes(samples, _PROFILE_SAMPLE, sample)
        if not samples:
            raise NotRenderable(
                "this profile recorded no samples (shorter than one sampling interval?)"
            )

        clock = "cpu" if capture.meta.get("clock") == "cpu" else "wall"
        value_type = _value_type(strings, clock, "nanoseconds")
        out = bytearray()
        _field_bytes(out, _PROFILE_SAMPLE_TYPE, value_type)
        out += samples
        _field_bytes(out, _PROFILE_MAPPING, _mapping())
        for frame, loc in locations.items():
            # Functions and locations are one to one: a FrameId is both.
            _field_bytes(out, _PROFILE_LOCATION, _location(loc, frame))
            _field_bytes(out, _PROFILE_FUNCTION, _function(loc, frame, strings))
        meta = capture.meta
        start_s = meta.get("start")
        if isinstance(start_s, (int, float)) and start_s > 0:
            # A float of time.time() holds microseconds, not nanoseconds:
            # round there rather than print float noise (...249999872).
            _field_int(out, _PROFILE_TIME, round(start_s * 1_000_000) * 1_000)
        _field_int(out, _PROFILE_DURATION, round(max(capture.duration_s, 0.0) * _NS))
        interval = meta.get("interval_s")
        if isinstance(interval, (int, float)) and interval > 0:
            _field_bytes(out, _PROFILE_PERIOD_TYPE, value_type)
            _field_int(out, _PROFILE_PERIOD, round(interval * _NS))
        for comment in _comments(capture):
            _field_int(out, _PROFILE_COMMENT, strings.index(comment))
        # Last, once every message above has added its strings.
        for text in strings.table:
            _field_bytes(out, _PROFILE_STRING_TABLE, text.encode("utf-8", "replace"))
        # mtime=0: the same capture gives the same bytes.
        return gzip.compress(bytes(out), compresslevel=6, mtime=0)


class _Strings:
    """pprof's string table: each string once, ``""`` at index 0."""

    def __init__(self) -> None:
        self.table: list[str] = [""]
        self._index: dict[str, int] = {"": 0}

    def index(self, text: str) -> int:
        i = self._index.get(text)
        if i is None:
            i = self._index[text] = len(self.table)
            self.table.append(text)
        return i


def _label(frame: FrameId, strings: _Strings) -> bytes:
    key = _LABEL_KEYS[frame.file]
    # "tag nightly" -> "nightly"; a route or thread is its name already.
    value = frame.function
    if frame.file != ROUTE_FILE and value.startswith(f"{key} "):
        value = value[len(key) + 1 :]
    out = bytearray()
    _field_int(out, _LABEL_KEY, strings.index(key))
    _field_int(out, _LABEL_STR, strings.index(value))
    return bytes(out)


def _mapping() -> bytes:
    """Mapping 1, of every location, saying that they are symbolized already.

    pprof then looks for no binary to symbolize them with, and does not
    complain that there is none ("Main binary filename not available").
    """
    out = bytearray()
    flags = (_MAPPING_HAS_FUNCTIONS, _MAPPING_HAS_FILENAMES, _MAPPING_HAS_LINE_NUMBERS)
    for number in (_MAPPING_ID, *flags):
        _field_int(out, number, 1)  # the id, then three bools
    return bytes(out)


def _location(loc: int, frame: FrameId) -> bytes:
    line = bytearray()
    _field_int(line, _LINE_FUNCTION_ID, loc)
    _field_int(line, _LINE_LINE, max(frame.line, 0))
    out = bytearray()
    _field_int(out, _LOCATION_ID, loc)
    _field_int(out, _LOCATION_MAPPING_ID, 1)
    _field_bytes(out, _LOCATION_LINE, line)
    return bytes(out)


def _function(fid: int, frame: FrameId, strings: _Strings) -> bytes:
    out = bytearray()
    _field_int(out, _FUNCTION_ID, fid)
    # No system_name: pprof "demangles" a function whose system name is its
    # name, and its C++ heuristics cut <...> out of it (<module>, <lambda>).
    _field_int(out, _FUNCTION_NAME, strings.index(frame.function or "?"))
    _field_int(out, _FUNCTION_FILENAME, strings.index(frame.file))
    _field_int(out, _FUNCTION_START_LINE, max(frame.line, 0))
    return bytes(out)


def _value_type(strings: _Strings, kind: str, unit: str) -> bytes:
    out = bytearray()
    _field_int(out, _VALUE_TYPE_TYPE, strings.index(kind))
    _field_int(out, _VALUE_TYPE_UNIT, strings.index(unit))
    return bytes(out)


def _comments(capture: Capture) -> list[str]:
    """What ``go tool pprof -comments`` shows: who made this, of what."""
    meta = capture.meta
    out = [f"asgi_perf {__version__}, engine {capture.engine}"]
    what = " ".join(str(v) for v in (meta.get("kind"), meta.get("route")) if v)
    if what:
        out.append(what)
    if not capture.exact_stacks:
        out.append("stacks rebuilt from call statistics: time split between callers pro rata")
    return out


# The wire format: a field is a varint key (number << 3 | wire type), then
# a varint (type 0) or a varint length and that many bytes (type 2).
# Fields holding zero are left out, as proto3 does.


def _varint(n: int) -> bytes:
    n &= _MASK64  # a negative int64 is its two's complement, ten bytes
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _field_int(out: bytearray, number: int, value: int) -> None:
    if value:
        out += _varint(number << 3)
        out += _varint(value)


def _field_bytes(out: bytearray, number: int, data: bytes | bytearray) -> None:
    out += _varint(number << 3 | 2)
    out += _varint(len(data))
    out += data
