"""The SVG line chart of the memory timeline, and the terminal's sparkline and block chart."""

from __future__ import annotations

import math
import xml.etree.ElementTree as ET

import pytest

from asgi_perf.cli._chart import BLOCKS, sparkline, text_chart
from asgi_perf.renderers.line_chart import line_chart_svg

SVG = "{http://www.w3.org/2000/svg}"


def chart(points: list[tuple[float, float]], **options: object) -> ET.Element:
    options.setdefault("title", "RSS of pid 4242")
    options.setdefault("x_label", "elapsed (min)")
    options.setdefault("y_label", "RSS (MB)")
    return ET.fromstring(line_chart_svg(points, **options))  # type: ignore[arg-type]


def texts(root: ET.Element) -> list[str]:
    return ["".join(t.itertext()) for t in root.iter(f"{SVG}text")]


def polyline_points(line: ET.Element) -> list[tuple[float, float]]:
    pairs = (pair.split(",") for pair in line.attrib["points"].split())
    return [(float(x), float(y)) for x, y in pairs]


def data_lines(root: ET.Element) -> list[ET.Element]:
    return [p for p in root.iter(f"{SVG}polyline") if "stroke" in p.attrib]


def test_a_timeline_is_one_polyline_point_per_reading() -> None:
    points = [(i / 12, 100 + i * 0.05 + math.sin(i / 7)) for i in range(720)]
    root = chart(points)
    [line] = data_lines(root)
    drawn = polyline_points(line)
    assert len(drawn) == 720
    # Left to right, and higher values higher up (SVG's y grows downwards).
    assert drawn == sorted(drawn)
    assert drawn[-1][1] < drawn[0][1]
    assert int(root.attrib["width"]) == 640 and int(root.attrib["height"]) == 240
    words = texts(root)
    assert {"RSS of pid 4242", "elapsed (min)", "RSS (MB)"} <= set(words)
    # Ticks enclose the data: 0 and 60 minutes, 100 and 140 MB, both ends labelled.
    assert {"0", "60", "100", "140"} <= set(words)
    assert "min 100 \u00b7 max 137 \u00b7 last 137" in words


def test_no_script_and_no_external_reference() -> None:
    svg = line_chart_svg([(0, 1), (1, 2)], title="t", x_label="x", y_label="y")
    root = ET.fromstring(svg)
    assert not list(root.iter(f"{SVG}script"))
    assert "href" not in svg and "http://" not in svg.replace("http://www.w3.org/2000/svg", "")


def test_texts_are_escaped() -> None:
    svg = line_chart_svg(
        [(0, 1), (1, 2)],
        title="<script>&amp; a > b</script>",
        x_label="x <&>",
        y_label="y & z",
        extra=[("<b>USS</b>", [(0, 0.5), (1, 1.5)])],
    )
    assert "<script>" not in svg and "<b>" not in svg
    root = ET.fromstring(svg)
    words = texts(root)
    assert "<script>&amp; a > b</script>" in words
    assert "x <&>" in words and "y & z" in words and "<b>USS</b>" in words
    assert root.find(f"{SVG}title") is not None
    assert "".join(root.find(f"{SVG}title").itertext()) == "<script>&amp; a > b</script>"  # type: ignore[union-attr]


def test_extra_series_each_get_a_line_and_a_legend_entry() -> None:
    main = [(float(i), 100.0 + i) for i in range(10)]
    uss = [(float(i), 80.0 + i) for i in range(10)]
    vms = [(float(i), 300.0) for i in range(5)]
    root = chart(main, extra=[("USS (MB)", uss), ("VMS (MB)", vms)])
    lines = data_lines(root)
    assert [len(polyline_points(line)) for line in lines] == [10, 10, 5]
    assert len({line.attrib["stroke"] for line in lines}) == 3
    assert {"RSS (MB)", "USS (MB)", "VMS (MB)"} <= set(texts(root))


@pytest.mark.parametrize("points", [[], [(math.nan, 1.0), (2.0, math.inf)]])
def test_no_data_yet(points: list[tuple[float, float]]) -> None:
    root = chart(points)
    assert "no data yet" in texts(root)
    assert not data_lines(root)


def test_one_point_is_a_dot() -> None:
    root = chart([(0.0, 123.4)])
    assert not data_lines(root)
    [dot] = root.iter(f"{SVG}circle")
    assert "123" in texts(root)
    assert float(dot.attrib["cx"]) > 58 and float(dot.attrib["cy"]) > 30


def test_a_flat_series_and_odd_sizes_do_not_raise() -> None:
    root = chart([(0.0, 50.0), (1.0, 50.0), (2.0, 50.0)], width=10, height=-5)
    assert int(root.attrib["width"]) >= 200 and int(root.attrib["height"]) >= 120
    [line] = data_lines(root)
    assert len({y for _, y in polyline_points(line)}) == 1


def test_a_long_series_keeps_each_columns_lowest_and_highest_point() -> None:
    points = [(float(i), 1.0) for i in range(20_000)]
    points[12_345] = (12_345.0, 99.0)  # one spike
    [line] = data_lines(chart(points))
    drawn = polyline_points(line)
    assert len(drawn) <= 2 * (640 - 58 - 14)
    # The spike is still the top of the chart.
    assert min(y for _, y in drawn) == pytest.approx(30, abs=20)


# --------------------------------------------------------------------------- terminal


def test_sparkline_spans_the_blocks_at_the_width_asked() -> None:
    line = sparkline(list(range(100)), width=20)
    assert len(line) == 20
    assert line[0] == BLOCKS[0] and line[-1] == BLOCKS[-1]
    assert list(line) == sorted(line)
    assert sparkline([1, 8], width=4) == BLOCKS[0] * 2 + BLOCKS[-1] * 2


def test_sparkline_flat_and_empty() -> None:
    assert sparkline([5.0] * 30, width=10) == BLOCKS[0] * 10
    assert sparkline([]) == ""
    assert sparkline([math.nan]) == ""


def test_text_chart_has_height_rows_min_max_and_the_x_range() -> None:
    xs = [i * 0.5 for i in range(120)]
    ys = [100 + i * 0.3 for i in range(120)]
    lines = text_chart(xs, ys, height=6, width=40).splitlines()
    assert len(lines) == 6 + 2
    assert lines[0].startswith("135 MB ┤") and lines[5].startswith("100 MB ┤")
    assert all(line[7] == "│" for line in lines[1:5])
    assert lines[6] == "       └" + "─" * 40
    assert lines[7].split() == ["0", "59.5"]
    assert lines[7].index("0") == 8 and lines[7].endswith("59.5") and len(lines[7]) == 8 + 40
    # Rising: the top row fills from the right, the bottom row is full.
    assert lines[0].rstrip().endswith(BLOCKS[-1]) and lines[0][8] == " "
    assert set(lines[5][8:]) <= set(BLOCKS)


def test_text_chart_flat_single_and_empty() -> None:
    flat = text_chart([0, 1, 2, 3], [5.0] * 4, height=3, width=10, y_label="KB").splitlines()
    assert flat[-3] == "5 KB ┤" + BLOCKS[0] * 10
    assert flat[0] == "5 KB ┤" and flat[1] == "     │"
    one = text_chart([7.0], [3.0], height=2).splitlines()
    assert one == ["3 MB ┤", "3 MB ┤" + BLOCKS[0], "     └─", "      7"]
    assert text_chart([], []) == "(no data yet)"
    with pytest.raises(ValueError, match="2 xs but 1 ys"):
        text_chart([1, 2], [1])
