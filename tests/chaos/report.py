"""Report writer of the chaos campaign: summary.json, report.md and plot.svg.

`write(out_dir, events, result, run)` turns a history (the events of HISTORY.md), the checker's
result and the run parameters into three files:

- `summary.json`: the run dict as given, the verdict, the number of anomalies of each kind, the
  checker's counts, availability and latency, and the fault windows.
- `report.md`: a readable report (verdict, command to reproduce, parameters, counts,
  availability, latency, fault windows, up to MAX_ANOMALIES entries of each anomaly kind).
- `plot.svg`: acknowledged writes per second (top) and ack latency p50/p99 per second (bottom)
  over seconds since the start, fault windows shaded behind both panels, heal and end marked.

The result is the checker's output: `valid` (bool), `anomalies` ({kind: [dict, ...]}, lists
possibly cut short), `anomaly_counts` ({kind: int}, the full counts), `counts` ({name: int}),
`indeterminate_present` (int), `availability` ({"share": 0..1, "longest_gap_s", "seconds"}) and
`latency_ms` ({"p50", "p99", "max"}; None without acks). The run dict may hold anything
JSON-serialisable; `run["command"]` is the command line that reproduces the campaign.

The SVG is written by hand (no plotting library) and escapes every text it carries.
"""

import html
import json
import math
from collections import defaultdict
from pathlib import Path
from xml.sax.saxutils import escape, quoteattr

MAX_ANOMALIES = 20
MAX_CELL = 200  # characters of a Markdown table cell; longer ones are cut with "…"

WIDTH, HEIGHT = 1000, 500
PLOT_LEFT, PLOT_RIGHT = 70, 980
ACKS_PANEL = (50, 230)  # top and bottom y of the panel
LATENCY_PANEL = (270, 450)
FAULT_COLORS = {
    "kill": "#d62728",
    "pause": "#ff7f0e",
    "partition": "#9467bd",
    "latency": "#17becf",
    "loss": "#8c564b",
    "disk-full": "#7f7f7f",
}
OTHER_FAULT_COLOR = "#bcbd22"
ACKS_COLOR, P50_COLOR, P99_COLOR = "#1f77b4", "#2ca02c", "#e377c2"
MARKER_LABELS = {"heal": ("end", -3), "end": ("start", 3)}  # text-anchor and x offset: apart


def write(out_dir: Path, events: list[dict], result: dict, run: dict) -> None:
    """Write summary.json, report.md and plot.svg into out_dir (created if missing)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    windows = fault_windows(events)
    summary = {
        "run": run,
        "valid": result["valid"],
        "anomaly_counts": result["anomaly_counts"],
        "counts": result["counts"],
        "availability": result["availability"],
        "latency_ms": result["latency_ms"],
        "faults": windows,
    }
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    (out_dir / "report.md").write_text(render_markdown(result, run, windows), encoding="utf-8")
    (out_dir / "plot.svg").write_text(render_svg(events), encoding="utf-8")


# ---------------------------------------------------------------- derived figures


def per_second(events: list[dict]) -> list[dict]:
    """For each second from 0 to the end: {"second", "acks", "p50_ms", "p99_ms"}.

    An ack counts in second floor(ack.t); its latency is ack.t minus the t of the value's first
    send, in ms rounded to the microsecond. The seconds run up to the `end` event (the last event
    without one), extended to the last ack. Latencies are None in seconds without an ack.
    """
    if not events:
        return []
    first_send = {}
    acks = defaultdict(int)
    latencies = defaultdict(list)
    for event in events:
        if event["kind"] == "send":
            first_send.setdefault(event["value"], event["t"])
        elif event["kind"] == "ack":
            second = math.floor(event["t"])
            acks[second] += 1
            sent = first_send.get(event["value"])
            if sent is not None:
                latencies[second].append(round((event["t"] - sent) * 1000, 3))
    last = max([math.ceil(_horizon(events))] + [second + 1 for second in acks])
    return [_second_figures(second, acks[second], sorted(latencies[second])) for second in range(last)]


def _horizon(events):
    """t of the `end` event, or of the last event when the workload never ended."""
    ends = [event["t"] for event in events if event["kind"] == "end"]
    return ends[0] if ends else events[-1]["t"]


def _second_figures(second, acks, latencies):
    return {
        "second": second,
        "acks": acks,
        "p50_ms": _percentile(latencies, 50),
        "p99_ms": _percentile(latencies, 99),
    }


def _percentile(sorted_values, p):
    """Nearest-rank percentile (the smallest value with at least p% of values <= it); None if empty."""
    if not sorted_values:
        return None
    rank = (p * len(sorted_values) + 99) // 100  # ceil(p% of n), at least 1 for 0 < p
    return sorted_values[rank - 1]


def fault_windows(events: list[dict]) -> list[dict]:
    """Fault start/end events paired by id, in start order; end is None for a fault never ended."""
    windows = {}
    for event in events:
        if event["kind"] != "fault":
            continue
        if event["phase"] == "start":
            windows[event["id"]] = {
                "id": event["id"],
                "fault": event["fault"],
                "detail": event["detail"],
                "nodes": event["nodes"],
                "start": event["t"],
                "end": None,
            }
        elif event["id"] in windows:
            windows[event["id"]]["end"] = event["t"]
    return list(windows.values())


# ---------------------------------------------------------------- report.md


def render_markdown(result: dict, run: dict, windows: list[dict]) -> str:
    """The Markdown report."""
    sections = [
        _title(result),
        _reproduce(run),
        _run_table(run),
        _counts_table(result["counts"], result["indeterminate_present"]),
        _availability(result["availability"]),
        _latency(result["latency_ms"]),
        _faults_table(windows),
        _anomalies(result["anomalies"], result["anomaly_counts"]),
        "## Plot\n\n![acks per second, ack latency and fault windows](plot.svg)",
    ]
    return "\n\n".join(sections) + "\n"


def _title(result):
    if result["valid"]:
        return "# Chaos campaign: PASS (no anomaly)"
    total = sum(result["anomaly_counts"].values())
    return f"# Chaos campaign: FAIL ({total} {'anomaly' if total == 1 else 'anomalies'})"


def _reproduce(run):
    return f"## Reproduce\n\n```sh\n{run['command']}\n```"


def _cell(value):
    """A Markdown table cell: lists joined, cut at MAX_CELL, HTML and pipes escaped, on one line."""
    text = _plain(value)
    if len(text) > MAX_CELL:
        text = text[:MAX_CELL - 1] + "…"
    text = html.escape(text, quote=False).replace("|", "\\|")
    return " ".join(text.splitlines())


def _plain(value):
    """Lists of scalars joined with commas, other lists and dicts as JSON, None as a dash."""
    if isinstance(value, list) and all(isinstance(item, (str, int, float)) for item in value):
        return ", ".join(str(item) for item in value)
    if isinstance(value, (list, dict)):
        return json.dumps(value)
    return "—" if value is None else str(value)


def _table(header, rows):
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_cell(value) for value in row) + " |" for row in rows]
    return "\n".join(lines)


def _run_table(run):
    rows = [(key, value) for key, value in run.items() if key != "command"]
    return "## Run\n\n" + _table(["parameter", "value"], rows)


def _counts_table(counts, indeterminate_present):
    rows = list(counts.items()) + [("indeterminate present in the log", indeterminate_present)]
    return "## Counts\n\n" + _table(["count", "value"], rows)


def _seconds(value):
    return f"{value:.3f}"


def _availability(availability):
    return (
        "## Availability\n\n"
        f"- seconds with at least one ack: {availability['share'] * 100:.1f}%"
        f" of {availability['seconds']} s\n"
        f"- longest gap without an ack: {_seconds(availability['longest_gap_s'])} s"
    )


def _latency(latency):
    rows = [[_milliseconds(latency[key]) for key in ("p50", "p99", "max")]]
    return "## Ack latency (ms)\n\n" + _table(["p50", "p99", "max"], rows)


def _milliseconds(value):
    return "—" if value is None else f"{value:.1f}"


def _faults_table(windows):
    if not windows:
        return "## Faults\n\nNo fault injected."
    header = ["id", "fault", "nodes", "detail", "start s", "end s", "duration s"]
    return "## Faults\n\n" + _table(header, [_fault_row(window) for window in windows])


def _fault_row(window):
    start, end = window["start"], window["end"]
    row = [window["id"], window["fault"], window["nodes"], window["detail"], _seconds(start)]
    if end is None:
        return row + ["never ended", "—"]
    return row + [_seconds(end), _seconds(end - start)]


def _anomalies(anomalies, anomaly_counts):
    found = {kind: count for kind, count in anomaly_counts.items() if count}
    if not found:
        return "## Anomalies\n\nNo anomaly."
    parts = ["## Anomalies"]
    parts += [_anomaly_section(kind, anomalies[kind], count) for kind, count in found.items()]
    return "\n\n".join(parts)


def _anomaly_section(kind, entries, count):
    """Up to MAX_ANOMALIES entries as a table; count is the full number (entries may be cut short)."""
    shown = entries[:MAX_ANOMALIES]
    header = list(dict.fromkeys(key for entry in shown for key in entry))
    rows = [[entry.get(key) for key in header] for entry in shown]
    text = f"### {kind} ({count})\n\n" + _table(header, rows)
    if count > len(shown):
        text += f"\n\n… and {count - len(shown)} more (see the checker output)."
    return text


# ---------------------------------------------------------------- plot.svg


def _tag(name, attrs, text=None):
    rendered = "".join(f" {key}={quoteattr(str(value))}" for key, value in attrs.items())
    if text is None:
        return f"<{name}{rendered}/>"
    return f"<{name}{rendered}>{escape(str(text))}</{name}>"


def _fmt(value):
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


def _nice_step(span, target, minimum):
    """A 1-2-5 step, at least `minimum`, that cuts span into at most about `target` intervals."""
    raw = max(span, 1e-9) / target
    magnitude = 10 ** math.floor(math.log10(raw))
    return max(minimum, next(m * magnitude for m in (1, 2, 5, 10) if m * magnitude >= raw))


def _ticks(top, target, minimum):
    step = _nice_step(top, target, minimum)
    return [i * step for i in range(int(top / step + 1e-9) + 1)]


class _Axes:
    """Maps seconds and panel values to SVG coordinates."""

    def __init__(self, x_max):
        self.x_max = x_max

    def x(self, seconds):
        return PLOT_LEFT + (PLOT_RIGHT - PLOT_LEFT) * seconds / self.x_max

    @staticmethod
    def y(panel, value, top):
        upper, lower = panel
        return lower - (lower - upper) * value / top


def render_svg(events: list[dict]) -> str:
    """The plot as an SVG document."""
    seconds = per_second(events)
    windows = fault_windows(events)
    markers = [event for event in events if event["kind"] in ("heal", "end")]
    axes = _Axes(_x_max(seconds, windows, markers))
    acks_top = _axis_top(max((s["acks"] for s in seconds), default=0), minimum=1)
    p99s = [s["p99_ms"] for s in seconds if s["p99_ms"] is not None]
    latency_top = _axis_top(max(p99s, default=0), minimum=0)
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" '
        f'viewBox="0 0 {WIDTH} {HEIGHT}" font-family="sans-serif" font-size="11">',
        _tag("rect", {"class": "background", "x": 0, "y": 0, "width": WIDTH, "height": HEIGHT, "fill": "white"}),
    ]
    parts += _fault_shades(axes, windows, markers)
    parts += _panel_frame(axes, ACKS_PANEL, (acks_top, 1), "acks/s")
    parts += _panel_frame(axes, LATENCY_PANEL, (latency_top, 0), "latency ms")
    parts += _x_axis(axes)
    parts += _ack_bars(axes, seconds, acks_top)
    parts += _latency_lines(axes, seconds, "p50_ms", P50_COLOR, latency_top)
    parts += _latency_lines(axes, seconds, "p99_ms", P99_COLOR, latency_top)
    parts += _markers(axes, markers)
    parts += _legend(windows)
    parts.append("</svg>")
    return "\n".join(parts) + "\n"


def _x_max(seconds, windows, markers):
    times = [len(seconds)] + [event["t"] for event in markers]
    times += [w["end"] if w["end"] is not None else w["start"] for w in windows]
    return max(max(times), 1)


def _axis_top(value, minimum):
    """The panel's upper bound: value rounded up to a tick step (1 when there is no data)."""
    if value <= 0:
        return 1
    step = _nice_step(value, 5, minimum)
    return math.ceil(value / step - 1e-9) * step


def _window_end(window, markers, x_max):
    """A never-ended fault lasts until the first heal after it, or to the plot's right edge."""
    if window["end"] is not None:
        return window["end"]
    heals = [e["t"] for e in markers if e["kind"] == "heal" and e["t"] >= window["start"]]
    return min(heals, default=x_max)


def _fault_color(fault):
    return FAULT_COLORS.get(fault, OTHER_FAULT_COLOR)


def _fault_shades(axes, windows, markers):
    parts = []
    for index, window in enumerate(windows):
        left = axes.x(window["start"])
        right = axes.x(_window_end(window, markers, axes.x_max))
        title = f"fault {window['id']}: {window['fault']} nodes {window['nodes']} {window['detail']}"
        parts += [
            '<g class="fault-window">',
            _tag("title", {}, title),
            _tag("rect", {
                "class": "fault", "x": f"{left:.1f}", "y": ACKS_PANEL[0],
                "width": f"{max(right - left, 1):.1f}", "height": LATENCY_PANEL[1] - ACKS_PANEL[0],
                "fill": _fault_color(window["fault"]), "fill-opacity": 0.15,
            }),
            _tag("text", {
                "x": f"{left + 3:.1f}", "y": ACKS_PANEL[0] + 12 + 12 * (index % 3),
                "fill": _fault_color(window["fault"]), "font-size": 10,
            }, window["fault"]),
            "</g>",
        ]
    return parts


def _panel_frame(axes, panel, scale, label):
    """The panel's frame, y ticks and label; scale is (top value, minimum tick step)."""
    (upper, lower), (top, minimum) = panel, scale
    parts = [_tag("rect", {
        "class": "frame", "x": PLOT_LEFT, "y": upper, "width": PLOT_RIGHT - PLOT_LEFT,
        "height": lower - upper, "fill": "none", "stroke": "#333",
    })]
    for value in _ticks(top, 5, minimum):
        y = axes.y(panel, value, top)
        parts.append(_tag("line", {
            "x1": PLOT_LEFT - 4, "x2": PLOT_LEFT, "y1": f"{y:.1f}", "y2": f"{y:.1f}", "stroke": "#333",
        }))
        parts.append(_tag("text", {"x": PLOT_LEFT - 6, "y": f"{y + 4:.1f}", "text-anchor": "end"}, _fmt(value)))
    middle = (upper + lower) / 2
    parts.append(_tag("text", {
        "x": 16, "y": middle, "text-anchor": "middle", "transform": f"rotate(-90 16 {middle})",
    }, label))
    return parts


def _x_axis(axes):
    bottom = LATENCY_PANEL[1]
    parts = []
    for value in _ticks(axes.x_max, 10, 1):
        x = axes.x(value)
        parts.append(_tag("line", {
            "x1": f"{x:.1f}", "x2": f"{x:.1f}", "y1": bottom, "y2": bottom + 4, "stroke": "#333",
        }))
        parts.append(_tag("text", {"x": f"{x:.1f}", "y": bottom + 16, "text-anchor": "middle"}, _fmt(value)))
    parts.append(_tag("text", {
        "x": (PLOT_LEFT + PLOT_RIGHT) / 2, "y": bottom + 36, "text-anchor": "middle",
    }, "seconds since start"))
    return parts


def _ack_bars(axes, seconds, top):
    parts = []
    for figures in seconds:
        if figures["acks"] == 0:
            continue
        left, right = axes.x(figures["second"]), axes.x(figures["second"] + 1)
        y = axes.y(ACKS_PANEL, figures["acks"], top)
        parts.append(_tag("rect", {
            "class": "acks", "x": f"{left:.1f}", "y": f"{y:.1f}",
            "width": f"{max(right - left - 1, 0.5):.1f}", "height": f"{ACKS_PANEL[1] - y:.1f}",
            "fill": ACKS_COLOR,
        }))
    return parts


def _runs(seconds, key):
    """Consecutive seconds that have a value for key, as lists of (second, value)."""
    runs, current = [], []
    for figures in seconds:
        if figures[key] is None:
            current = []
            continue
        if not current:
            runs.append(current)
        current.append((figures["second"], figures[key]))
    return runs


def _latency_lines(axes, seconds, key, color, top):
    parts = []
    for run in _runs(seconds, key):
        points = [(axes.x(second + 0.5), axes.y(LATENCY_PANEL, value, top)) for second, value in run]
        if len(points) == 1:
            (x, y), = points
            parts.append(_tag("circle", {"class": key, "cx": f"{x:.1f}", "cy": f"{y:.1f}", "r": 2, "fill": color}))
        else:
            parts.append(_tag("polyline", {
                "class": key, "points": " ".join(f"{x:.1f},{y:.1f}" for x, y in points),
                "fill": "none", "stroke": color, "stroke-width": 1.5,
            }))
    return parts


def _markers(axes, markers):
    parts = []
    for event in markers:
        x = axes.x(event["t"])
        parts.append(_tag("line", {
            "class": "marker", "x1": f"{x:.1f}", "x2": f"{x:.1f}", "y1": ACKS_PANEL[0] - 4,
            "y2": LATENCY_PANEL[1], "stroke": "#000", "stroke-dasharray": "4 3",
        }))
        anchor, shift = MARKER_LABELS[event["kind"]]
        label = {"x": f"{x + shift:.1f}", "y": ACKS_PANEL[0] - 7, "text-anchor": anchor}
        parts.append(_tag("text", label, event["kind"]))
    return parts


def _legend(windows):
    entries = [("acks/s", ACKS_COLOR, 1), ("p50 latency", P50_COLOR, 1), ("p99 latency", P99_COLOR, 1)]
    entries += [(fault, _fault_color(fault), 0.3) for fault in dict.fromkeys(w["fault"] for w in windows)]
    parts, x = ['<g class="legend">'], PLOT_LEFT
    for label, color, opacity in entries:
        parts.append(_tag("rect", {"x": x, "y": 12, "width": 12, "height": 10, "fill": color, "fill-opacity": opacity}))
        parts.append(_tag("text", {"x": x + 16, "y": 21}, label))
        x += 28 + 7 * len(label)
    parts.append("</g>")
    return parts
