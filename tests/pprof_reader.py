"""A reader of pprof files for the tests, written from profile.proto alone.

It shares no code with the renderer: a generic protobuf wire-format parser
(every wire type, packed or not), then the field numbers of google/pprof's
``proto/profile.proto``. ``go tool pprof`` is the other reader, where Go is
installed.
"""

from __future__ import annotations

import gzip
from dataclasses import dataclass, field

Fields = dict[int, list[int | bytes]]


def _varint(data: bytes, i: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = data[i]
        i += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if byte < 0x80:
            return value, i


def parse(data: bytes) -> Fields:
    """Every field of one message by number, in order of appearance."""
    out: Fields = {}
    i = 0
    while i < len(data):
        key, i = _varint(data, i)
        number, wire = key >> 3, key & 7
        value: int | bytes
        if wire == 0:
            value, i = _varint(data, i)
        elif wire == 2:
            size, i = _varint(data, i)
            value, i = data[i : i + size], i + size
        elif wire in (1, 5):
            size = 8 if wire == 1 else 4
            value, i = int.from_bytes(data[i : i + size], "little"), i + size
        else:
            raise ValueError(f"wire type {wire} at byte {i}")
        assert number > 0, "field number 0"
        out.setdefault(number, []).append(value)
    assert i == len(data), "message overran its length"
    return out


def _signed(n: int) -> int:
    return n - (1 << 64) if n >= 1 << 63 else n


def ints(fields: Fields, number: int) -> list[int]:
    """A repeated integer field, packed or not."""
    out: list[int] = []
    for value in fields.get(number, ()):
        if isinstance(value, bytes):
            i = 0
            while i < len(value):
                n, i = _varint(value, i)
                out.append(_signed(n))
        else:
            out.append(_signed(value))
    return out


def one(fields: Fields, number: int) -> int:
    values = ints(fields, number)
    assert len(values) <= 1, f"field {number} repeated"
    return values[0] if values else 0


def messages(fields: Fields, number: int) -> list[Fields]:
    out = []
    for value in fields.get(number, ()):
        assert isinstance(value, bytes), f"field {number} is not a message"
        out.append(parse(value))
    return out


@dataclass
class Function:
    name: str
    system_name: str
    filename: str
    start_line: int


@dataclass
class Sample:
    location_ids: list[int]
    values: list[int]
    labels: dict[str, list[str]]


@dataclass
class Profile:
    strings: list[str]
    sample_types: list[tuple[str, str]]
    samples: list[Sample]
    # location id -> its lines, each (function id, line)
    locations: dict[int, list[tuple[int, int]]]
    location_mappings: dict[int, int]
    functions: dict[int, Function]
    mappings: list[Fields]
    time_nanos: int
    duration_nanos: int
    period_type: tuple[str, str] | None
    period: int
    comments: list[str]
    raw: Fields = field(repr=False)

    def names(self, sample: Sample) -> list[str]:
        """The function names of a sample's stack, leaf first as stored."""
        lines = [line for loc in sample.location_ids for line in self.locations[loc]]
        return [self.functions[fid].name for fid, _ in lines]


def read(body: bytes) -> Profile:
    """A ``.pb.gz`` file's profile; asserts what profile.proto requires."""
    raw = parse(gzip.decompress(body))
    strings = []
    for value in raw.get(6, ()):
        assert isinstance(value, bytes)
        strings.append(value.decode("utf-8"))
    assert strings and strings[0] == "", "string_table[0] must be ''"

    def s(i: int) -> str:
        return strings[i]

    def value_type(m: Fields) -> tuple[str, str]:
        return s(one(m, 1)), s(one(m, 2))

    samples = []
    for m in messages(raw, 2):
        labels: dict[str, list[str]] = {}
        for label in messages(m, 3):
            labels.setdefault(s(one(label, 1)), []).append(s(one(label, 2)))
        samples.append(Sample(ints(m, 1), ints(m, 2), labels))
    locations, location_mappings = {}, {}
    for m in messages(raw, 4):
        lid = one(m, 1)
        assert lid > 0 and lid not in locations, f"location id {lid}"
        locations[lid] = [(one(line, 1), one(line, 2)) for line in messages(m, 4)]
        location_mappings[lid] = one(m, 2)
    functions = {}
    for m in messages(raw, 5):
        fid = one(m, 1)
        assert fid > 0 and fid not in functions, f"function id {fid}"
        functions[fid] = Function(s(one(m, 2)), s(one(m, 3)), s(one(m, 4)), one(m, 5))
    period_types = messages(raw, 11)
    return Profile(
        strings=strings,
        sample_types=[value_type(m) for m in messages(raw, 1)],
        samples=samples,
        locations=locations,
        location_mappings=location_mappings,
        functions=functions,
        mappings=messages(raw, 3),
        time_nanos=one(raw, 9),
        duration_nanos=one(raw, 10),
        period_type=value_type(period_types[0]) if period_types else None,
        period=one(raw, 12),
        comments=[s(i) for i in ints(raw, 13)],
        raw=raw,
    )
