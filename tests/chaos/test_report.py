"""Tests of the chaos report writer (report.py) on small hand-written histories."""

import json
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import report  # noqa: E402

SVG = "{http://www.w3.org/2000/svg}"
PARTITION_DETAIL = "halves 1,2 | 3 <&>"


def send(t, value, producer="p0", partition=0):
    return {"t": t, "kind": "send", "producer": producer, "partition": partition, "value": value}


def ack(t, value, offset, producer="p0", partition=0):
    return {"t": t, "kind": "ack", "producer": producer, "partition": partition, "value": value, "offset": offset}


def fault(t, phase, fault_id, kind, detail, nodes):
    return {"t": t, "kind": "fault", "fault": kind, "phase": phase, "id": fault_id, "detail": detail, "nodes": nodes}


def history():
    """Two producers over ~10 s; node 2 killed from 3 s to 5 s; a partition from 6 s never ends."""
    return [
        send(0.0, "v0"),
        ack(0.25, "v0", 0),
        send(0.5, "v1", "p1", 1),
        ack(0.625, "v1", 0, "p1", 1),
        send(1.0, "v2"),
        ack(1.5, "v2", 1),
        send(2.0, "v3", "p1", 1),
        send(2.1, "v4"),
        ack(2.5, "v3", 1, "p1", 1),
        ack(2.75, "v4", 2),
        fault(3.0, "start", 1, "kill", "kill -9 node 2", [2]),
        send(3.2, "v5", "p1", 1),
        send(4.0, "v6"),
        {"t": 4.9, "kind": "fail", "producer": "p0", "partition": 0, "value": "v6", "error": "timed out"},
        fault(5.0, "end", 1, "kill", "kill -9 node 2", [2]),
        ack(5.5, "v5", 2, "p1", 1),
        send(5.6, "v7"),
        ack(5.75, "v7", 3),
        fault(6.0, "start", 2, "partition", PARTITION_DETAIL, [1, 3]),
        send(6.5, "v8", "p1", 1),
        ack(7.0, "v8", 3, "p1", 1),
        {"t": 8.0, "kind": "heal"},
        send(8.5, "v9"),
        ack(8.75, "v9", 4),
        {"t": 9.5, "kind": "end"},
        {"t": 10.0, "kind": "drain", "partition": 0, "offset": 0, "value": "v0"},
        {"t": 10.1, "kind": "drain-end", "partition": 0, "high_watermark": 5, "complete": True},
    ]


def no_anomalies():
    kinds = ["lost", "duplicated", "inconsistent_offset", "wrong_partition", "skipped",
             "nonmonotonic", "unexpected", "incomplete_drain"]
    return {kind: [] for kind in kinds}


def result(anomalies=None):
    """A checker result in the shape report.py expects; anomaly_counts are the lists' lengths."""
    anomalies = anomalies or no_anomalies()
    return {
        "valid": not any(anomalies.values()),
        "anomalies": anomalies,
        "anomaly_counts": {kind: len(found) for kind, found in anomalies.items()},
        "counts": {"sent": 10, "acked": 9, "failed": 1, "indeterminate": 1, "read": 0, "drained": 1},
        "indeterminate_present": 0,
        "availability": {"share": 0.6, "longest_gap_s": 2.75, "seconds": 10},
        "latency_ms": {"p50": 500.0, "p99": 2300.0, "max": 2300.0},
    }


def failing_result():
    anomalies = no_anomalies()
    anomalies["lost"] = [{"value": "v2", "partition": 0, "offset": 1, "t": 1.5}]
    anomalies["duplicated"] = [{"value": f"d{i}", "positions": [[0, i], [1, i]]} for i in range(25)]
    return result(anomalies)


RUN = {
    "seed": 42,
    "nodes": 3,
    "duration_s": 10,
    "faults": ["kill", "partition"],
    "command": "python3 tests/chaos/campaign.py --seed 42 --nodes 3 --duration 10",
    "spate_version": "0.1.0",
}


def seconds_row(second, acks, p50, p99):
    return {"second": second, "acks": acks, "p50_ms": p50, "p99_ms": p99}


# ---------------------------------------------------------------- per_second / fault_windows


def test_per_second_counts_acks_and_latency_percentiles_up_to_end():
    assert report.per_second(history()) == [
        seconds_row(0, 2, 125.0, 250.0),
        seconds_row(1, 1, 500.0, 500.0),
        seconds_row(2, 2, 500.0, 650.0),
        seconds_row(3, 0, None, None),
        seconds_row(4, 0, None, None),
        seconds_row(5, 2, 150.0, 2300.0),
        seconds_row(6, 0, None, None),
        seconds_row(7, 1, 500.0, 500.0),
        seconds_row(8, 1, 250.0, 250.0),
        seconds_row(9, 0, None, None),
    ]


def test_per_second_without_end_runs_to_last_event_and_extends_to_late_acks():
    unfinished = [send(0.0, "a"), ack(0.5, "a", 0), send(2.2, "b")]
    assert [row["second"] for row in report.per_second(unfinished)] == [0, 1, 2]
    late_ack = [send(0.0, "a"), {"t": 1.0, "kind": "end"}, ack(2.5, "a", 0)]
    assert report.per_second(late_ack) == [
        seconds_row(0, 0, None, None),
        seconds_row(1, 0, None, None),
        seconds_row(2, 1, 2500.0, 2500.0),
    ]


def test_per_second_percentiles_are_nearest_rank():
    events = [send(0.0, f"v{i}") for i in range(100)]
    events += [ack(0.001 * (i + 1), f"v{i}", i) for i in range(100)]  # 1 ms .. 100 ms
    events.append(ack(0.9, "unsent", 100))  # counted, but without a send it has no latency
    (row,) = report.per_second(events)
    assert row == seconds_row(0, 101, 50.0, 99.0)


def test_per_second_latency_runs_from_the_first_send():
    events = [send(0.0, "v"), send(0.5, "v"), ack(1.25, "v", 0)]
    assert report.per_second(events)[1] == seconds_row(1, 1, 1250.0, 1250.0)


def test_fault_windows_pair_start_and_end_by_id_and_keep_open_faults():
    assert report.fault_windows(history()) == [
        {"id": 1, "fault": "kill", "detail": "kill -9 node 2", "nodes": [2], "start": 3.0, "end": 5.0},
        {"id": 2, "fault": "partition", "detail": PARTITION_DETAIL, "nodes": [1, 3], "start": 6.0, "end": None},
    ]


def test_fault_windows_pair_interleaved_faults():
    events = [
        fault(1.0, "start", 7, "pause", "node 1", [1]),
        fault(2.0, "start", 8, "latency", "200ms", [2]),
        fault(3.0, "end", 7, "pause", "node 1", [1]),
        fault(4.0, "end", 8, "latency", "200ms", [2]),
        fault(4.5, "end", 9, "loss", "10%", [3]),  # an end without its start is ignored
    ]
    assert [(w["id"], w["start"], w["end"]) for w in report.fault_windows(events)] == [(7, 1.0, 3.0), (8, 2.0, 4.0)]


# ---------------------------------------------------------------- write()


def write(tmp_path, events=None, res=None):
    report.write(tmp_path / "out", history() if events is None else events, res or result(), RUN)
    return tmp_path / "out"


def test_write_creates_the_three_files(tmp_path):
    out = write(tmp_path)
    assert sorted(path.name for path in out.iterdir()) == ["plot.svg", "report.md", "summary.json"]


def test_summary_json_round_trips_with_the_run_and_fault_windows(tmp_path):
    out = write(tmp_path, res=failing_result())
    summary = json.loads((out / "summary.json").read_text())
    anomaly_counts = {kind: 0 for kind in no_anomalies()} | {"lost": 1, "duplicated": 25}
    assert summary == {
        "run": RUN,
        "valid": False,
        "anomaly_counts": anomaly_counts,
        "counts": failing_result()["counts"],
        "availability": {"share": 0.6, "longest_gap_s": 2.75, "seconds": 10},
        "latency_ms": {"p50": 500.0, "p99": 2300.0, "max": 2300.0},
        "faults": report.fault_windows(history()),
    }


def test_report_of_a_valid_run_says_pass_and_no_anomaly(tmp_path):
    text = (write(tmp_path) / "report.md").read_text()
    assert text.startswith("# Chaos campaign: PASS (no anomaly)\n")
    assert "FAIL" not in text
    assert "## Anomalies\n\nNo anomaly." in text
    assert "```sh\n" + RUN["command"] + "\n```" in text
    assert "| seed | 42 |" in text
    assert "| command |" not in text
    assert "| faults | kill, partition |" in text
    assert "| acked | 9 |" in text
    assert "| indeterminate present in the log | 0 |" in text
    assert "- seconds with at least one ack: 60.0% of 10 s" in text
    assert "- longest gap without an ack: 2.750 s" in text
    assert "| 500.0 | 2300.0 | 2300.0 |" in text
    assert "![acks per second, ack latency and fault windows](plot.svg)" in text


def test_report_fault_table_has_one_row_per_window_with_escaped_detail(tmp_path):
    text = (write(tmp_path) / "report.md").read_text()
    assert "| id | fault | nodes | detail | start s | end s | duration s |" in text
    assert "| 1 | kill | 2 | kill -9 node 2 | 3.000 | 5.000 | 2.000 |" in text
    assert "| 2 | partition | 1, 3 | halves 1,2 \\| 3 &lt;&amp;&gt; | 6.000 | never ended | — |" in text


def test_report_of_a_failing_run_lists_anomalies_up_to_the_limit(tmp_path):
    text = (write(tmp_path, res=failing_result()) / "report.md").read_text()
    assert text.startswith("# Chaos campaign: FAIL (26 anomalies)\n")
    assert "No anomaly." not in text
    assert "### lost (1)\n\n| value | partition | offset | t |\n|---|---|---|---|\n| v2 | 0 | 1 | 1.5 |" in text
    assert "### duplicated (25)" in text
    assert "| d19 | [[0, 19], [1, 19]] |" in text
    assert "| d20 |" not in text
    assert "… and 5 more" in text
    assert "### skipped" not in text


def test_report_counts_anomalies_beyond_a_list_cut_short(tmp_path):
    res = failing_result()
    res["anomaly_counts"]["duplicated"] = 130  # the checker kept only 25 of them
    out = write(tmp_path, res=res)
    text = (out / "report.md").read_text()
    assert text.startswith("# Chaos campaign: FAIL (131 anomalies)\n")
    assert "### duplicated (130)" in text
    assert "… and 110 more" in text
    assert json.loads((out / "summary.json").read_text())["anomaly_counts"]["duplicated"] == 130


def test_report_reads_the_checkers_own_result(tmp_path):
    """checker.check's output has the shape report.py reads. The drain here has only v0 of
    partition 0 (complete) and no drain-end for partition 1: 4 acked values lost, 1 incomplete."""
    import checker  # here, so that the other tests do not depend on checker.py

    text = (write(tmp_path, res=checker.check(history())) / "report.md").read_text()
    assert text.startswith("# Chaos campaign: FAIL (5 anomalies)\n")
    assert "### lost (4)" in text
    assert "### incomplete_drain (1)" in text
    assert "- seconds with at least one ack: 60.0% of 10 s" in text
    assert "| 500.0 | 2300.0 | 2300.0 |" in text


def test_report_cuts_long_cells(tmp_path):
    anomalies = no_anomalies()
    observations = [{"value": f"x{i}", "source": "read", "t": 1.0} for i in range(50)]
    anomalies["inconsistent_offset"] = [{"partition": 0, "offset": 7, "values": observations}]
    text = (write(tmp_path, res=result(anomalies)) / "report.md").read_text()
    row = next(line for line in text.splitlines() if line.startswith("| 0 | 7 |"))
    cell = row.split(" | ")[2].removesuffix(" |")
    assert len(cell) == report.MAX_CELL and cell.endswith("…")
    assert cell.startswith('[{"value": "x0", "source": "read", "t": 1.0}, {"value": "x1"')


def test_report_says_one_anomaly_in_the_singular(tmp_path):
    anomalies = no_anomalies()
    anomalies["incomplete_drain"] = [{"partition": 1, "high_watermark": 9}]
    text = (write(tmp_path, res=result(anomalies)) / "report.md").read_text()
    assert text.startswith("# Chaos campaign: FAIL (1 anomaly)\n")


# ---------------------------------------------------------------- plot.svg


def svg_root(out):
    root = ET.parse(out / "plot.svg").getroot()
    assert root.tag == SVG + "svg"
    assert (root.get("width"), root.get("height")) == ("1000", "500")
    return root


def by_class(root, tag, cls):
    return [el for el in root.iter(SVG + tag) if el.get("class") == cls]


def test_plot_shades_each_fault_window_once(tmp_path):
    root = svg_root(write(tmp_path))
    shades = by_class(root, "rect", "fault")
    assert len(shades) == 2
    # x axis spans 0..10 s over x 70..980: the kill covers 3..5 s, the open partition 6 s..heal (8 s).
    assert [(float(r.get("x")), float(r.get("width"))) for r in shades] == [(343.0, 182.0), (616.0, 182.0)]
    labels = [g.find(SVG + "text").text for g in by_class(root, "g", "fault-window")]
    assert labels == ["kill", "partition"]
    legend = [t.text for t in by_class(root, "g", "legend")[0].iter(SVG + "text")]
    assert legend == ["acks/s", "p50 latency", "p99 latency", "kill", "partition"]


def test_plot_escapes_fault_detail(tmp_path):
    out = write(tmp_path)
    raw = (out / "plot.svg").read_text()
    assert "<&>" not in raw
    assert "3 &lt;&amp;&gt;" in raw
    titles = [g.find(SVG + "title").text for g in by_class(svg_root(out), "g", "fault-window")]
    assert titles[1] == f"fault 2: partition nodes [1, 3] {PARTITION_DETAIL}"


def test_plot_draws_ack_bars_latency_lines_and_heal_end_markers(tmp_path):
    root = svg_root(write(tmp_path))
    assert len(by_class(root, "rect", "acks")) == 6  # seconds 0, 1, 2, 5, 7, 8
    # p50 and p99: seconds 0-2 and 7-8 are lines, second 5 (alone between empty seconds) a point.
    for key in ("p50_ms", "p99_ms"):
        assert len(by_class(root, "polyline", key)) == 2
        assert len(by_class(root, "circle", key)) == 1
    markers = by_class(root, "line", "marker")
    assert [float(line.get("x1")) for line in markers] == [798.0, 934.5]
    texts = [t.text for t in root.iter(SVG + "text")]
    assert "heal" in texts and "end" in texts
    assert "seconds since start" in texts


# ---------------------------------------------------------------- no acks


def empty_result():
    res = result()
    res["counts"] = {name: 0 for name in res["counts"]}
    res["availability"] = {"share": 0.0, "longest_gap_s": 0.0, "seconds": 0}
    res["latency_ms"] = {"p50": None, "p99": None, "max": None}
    return res


def test_empty_history_reports_zero_availability(tmp_path):
    assert report.per_second([]) == []
    assert report.fault_windows([]) == []
    out = write(tmp_path, events=[], res=empty_result())
    text = (out / "report.md").read_text()
    assert "- seconds with at least one ack: 0.0% of 0 s" in text
    assert "| — | — | — |" in text
    assert "No fault injected." in text
    root = svg_root(out)
    assert by_class(root, "rect", "acks") == [] and by_class(root, "rect", "fault") == []
    assert json.loads((out / "summary.json").read_text())["faults"] == []


def test_history_without_any_ack_plots_empty_seconds(tmp_path):
    events = [send(0.0, "a"), fault(0.5, "start", 1, "kill", "node 1", [1]), send(1.0, "b"), {"t": 3.0, "kind": "end"}]
    assert report.per_second(events) == [seconds_row(s, 0, None, None) for s in range(3)]
    root = svg_root(write(tmp_path, events=events, res=empty_result()))
    assert by_class(root, "rect", "acks") == []
    assert by_class(root, "polyline", "p99_ms") == []
    (shade,) = by_class(root, "rect", "fault")
    assert float(shade.get("x")) + float(shade.get("width")) == 980.0  # never ended, no heal: to the right edge
