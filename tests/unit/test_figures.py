"""The README's Figures table: renderers from result JSON to rows, and the partial rewrite between the markers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from loadtests import figures
from loadtests.figures import BEGIN, END, ORDER, RENDERERS, Row, update_readme

MACHINE = {"machine": "box x86_64 4 cores, Python 3.11.7", "finished_at": "2030-01-02T03:04:05Z"}

BUS = {
    "messages_per_round": 20000,
    "body_bytes": 966,
    "rounds": 3,
    "bus_produce_msgs_per_s": 2634.17,
    "bus_consume_msgs_per_s": 3658.17,
    "raw_produce_msgs_per_s": 4058.83,
    "raw_consume_msgs_per_s": 4485.71,
    "produce_ratio_bus_vs_raw": 0.649,
    "consume_ratio_bus_vs_raw": 0.8155,
    **MACHINE,
}

ATTENTION = {
    "shape": "8 query heads, 2 KV heads, head_dim 128, fp32, one layer, 1 thread",
    "timing": "median of 7 windows",
    "hata_budget": 0.03,
    "chelsea_budget": 0.2,
    "decode_attention_ms": {"dense": {"65536": 25.6, "131072": 44.3}},
    "kv_bytes_one_layer": {
        "65536": {"dense": 134217728, "hata": 137644032, "chelsea": 27186488, "chelsea_hata": 27662516},
        "131072": {"dense": 268435456, "hata": 274221056, "chelsea": 54134480, "chelsea_hata": 55082360},
    },
    "speedup_vs_dense": {
        "dense": {"65536": 1.0, "131072": 1.0},
        "hata": {"65536": 8.155, "131072": 8.314},
        "chelsea": {"65536": 4.54, "131072": 4.46},
        "chelsea_hata": {"65536": 11.62, "131072": 12.63},
    },
    **MACHINE,
}

PIPELINE = {
    "steps": [
        {
            "target_spans_per_s": 20000,
            "offered_spans_per_s": 20108.9,
            "consumed_spans_per_s": 20108.9,
            "lag_records": 0,
        },
        {
            "target_spans_per_s": 50000,
            "offered_spans_per_s": 50304.6,
            "consumed_spans_per_s": 49033.8,
            "lag_records": 10,
        },
        {
            "target_spans_per_s": 100000,
            "offered_spans_per_s": 102837.2,
            "consumed_spans_per_s": 45477.49,
            "lag_records": 444,
        },
    ],
    "knee_spans_per_s": 50304.6,
    "highest_rate_kept_up_spans_per_s": 50304.6,
    "step_s": 15,
    "event_clock": "1x wall clock; rate by the simulator's rate_scale",
    "env": {"FAULTLINE_LOAD_STEP_S": "15"},
    "load_at_start": 3.52,
    **MACHINE,
}

RETRIEVAL_STREAMED = {
    "prompts_per_length": 20,
    "streamed_decode_tokens": 512,
    "accuracy": {
        "dense": {"4096": 1.0, "8192": 1.0},
        "chelsea@20%": {"4096": 1.0, "8192": 1.0},
        "window@20%": {"4096": 0.3, "8192": 0.1},
    },
    "decode_step_ms_median": {},
    "certified": {},
    **MACHINE,
}

RCA_EVAL = {
    "cases": 8,
    "systems": ["online-boutique"],
    "seeds": [1000],
    "baselines": "ready",
    "table": {
        "cpu": {
            "rclagent": {"AC@1": 0.5, "MRR": 0.6, "cases": 4},
            "nsigma": {"AC@1": 1.0, "MRR": 1.0, "cases": 4},
            "baro": {"AC@1": 0.25, "MRR": 0.4, "cases": 4},
        },
        "delay": {
            "rclagent": {"AC@1": 1.0, "MRR": 1.0, "cases": 4},
            "nsigma": {"AC@1": 0.0, "MRR": 0.1, "cases": 4},
            "baro": {"AC@1": 0.0, "MRR": 0.1, "cases": 4},
        },
        "all": {
            "rclagent": {"AC@1": 0.75, "MRR": 0.8, "cases": 8},
            "nsigma": {"AC@1": 0.5, "MRR": 0.55, "cases": 8},
            "baro": {"AC@1": 0.125, "MRR": 0.25, "cases": 8},
        },
    },
    "latency_ms": {"median": 5889.4, "p95": 16480.4},
    "wall_s": 980.2,
}


def write_results(results: Path, **files: dict) -> Path:
    results.mkdir(exist_ok=True)
    for name, data in files.items():
        (results / f"{name}.json").write_text(json.dumps(data))
    return results


README_TEXT = f"""# Project

Some prose | with a pipe.

## Figures

{BEGIN}

| what | figure | command | machine |
|---|---|---|---|
| `bus` bus, old figures | 1 / 2 msg/s | `make bench BENCH=bus` | old box |
| HATA hash training (hand-written) | 292 s | `faultline train hata` | same |
| `attention.speedup` decode attention | 8× | `make bench BENCH=attention` | same |
| `attention.kv` KV memory | 128 MiB | `make bench BENCH=attention` | same |
| `kg` kg-builder | 12.5 reports/s | `make bench BENCH=kg` | same, loaded |

{END}

## After
"""


@pytest.fixture
def readme(tmp_path: Path) -> Path:
    path = tmp_path / "README.md"
    path.write_text(README_TEXT)
    return path


def table_lines(text: str) -> list[str]:
    return text[text.index(BEGIN) : text.index(END)].splitlines()


def test_bus_row() -> None:
    (row,) = figures.bus(BUS)
    assert row == Row(
        "bus",
        "966 B protobuf CloudEvents through the bus (3 rounds of 20,000): produce / consume",
        "2,634 / 3,658 msg/s; 0.65× / 0.82× raw kafka-python (4,059 / 4,486)",
        "`make bench BENCH=bus`",
        "box x86_64 4 cores, Python 3.11.7, broker on the same cores; 2030-01-02",
    )
    assert row.line().startswith("| `bus` 966 B protobuf CloudEvents") and row.line().endswith("; 2030-01-02 |")


def test_attention_rows_state_ratios_and_memory() -> None:
    speedup, kv = figures.attention(ATTENTION)
    assert speedup.key == "attention.speedup"
    assert speedup.figure.startswith("at 64K / 128K: hata 8.2× / 8.3×; chelsea 4.5× / 4.5×; chelsea+hata 11.6× / 12.6×")
    assert kv.key == "attention.kv"
    assert kv.what == "KV memory, one layer at 64K tokens"
    assert kv.figure == "dense 128 MiB; hata +2.6% (codes+norms, fp32 cache); chelsea 20% −79.7%; chelsea+hata −79.4%"


def test_pipeline_row_has_knee_command_settings_and_load() -> None:
    (row,) = figures.loadtest_pipeline(PIPELINE)
    assert row.figure.startswith(
        "kept up at 50,305 spans/s offered (49,034 consumed), fell behind at 102,837 (45,477 consumed, lag 444 records)"
    )
    assert row.command == "`FAULTLINE_LOAD_STEP_S=15 make loadtest LOAD=pipeline`"
    assert row.machine.endswith("; load 3.5 at start; 2030-01-02")


def test_partial_retrieval_run_renders_only_its_family_with_the_command_that_reproduces_it() -> None:
    (row,) = figures.retrieval(RETRIEVAL_STREAMED)
    assert row.key == "retrieval.chelsea.streamed"
    assert row.figure == (
        "dense 1.00 / 1.00; chelsea 20%: 1.00 everywhere; sink+recent window at the same budget 0.10–0.30"
    )
    assert "FAULTLINE_BENCH_STREAM=512" in row.command and "FAULTLINE_BENCH_PROMPTS=20" in row.command
    assert "FAULTLINE_BENCH_CONFIGS=dense,chelsea@20%,window@20%" in row.command


def test_rca_eval_rows_compare_with_the_baselines() -> None:
    accuracy, latency = figures.rca_eval(RCA_EVAL)
    assert accuracy.figure.startswith("RCLAgent 0.75 (0.80); n-sigma 0.50 (0.55); BARO 0.12 (0.25)")
    assert accuracy.figure.endswith("per kind, RCLAgent vs the best baseline: cpu 0.50 vs 1.00, delay 1.00 vs 0.00")
    assert "RCAEval" in accuracy.machine
    assert latency.figure == "median 5.9 s, p95 16.5 s; the whole evaluation 980 s"
    assert accuracy.machine.startswith("machine not recorded")  # an eval result written before stamping


def test_every_key_has_a_place_in_order() -> None:
    rendered = [
        *figures.bus(BUS),
        *figures.attention(ATTENTION),
        *figures.loadtest_pipeline(PIPELINE),
        *figures.retrieval(RETRIEVAL_STREAMED),
        *figures.rca_eval(RCA_EVAL),
    ]
    assert all(row.key in ORDER for row in rendered)
    assert len(set(ORDER)) == len(ORDER)
    assert set(RENDERERS) >= {"bus.json", "attention.json", "retrieval.json", "rca_eval.json"}


def test_only_rows_with_a_result_change_and_the_rest_stay_byte_identical(readme: Path, tmp_path: Path) -> None:
    results = write_results(tmp_path / "results", attention=ATTENTION)
    before = readme.read_text()
    changed = update_readme(readme, results)
    after = readme.read_text()
    assert changed == ["attention.speedup", "attention.kv"]
    old, new = table_lines(before), table_lines(after)
    assert len(old) == len(new)
    for a, b in zip(old, new, strict=True):
        if a.startswith(("| `attention.speedup`", "| `attention.kv`")):
            assert a != b
        else:
            assert a == b  # hand-written rows, and `bus` / `kg` whose results are missing
    outside = before[: before.index(BEGIN)], before[before.index(END) :]
    assert (after[: after.index(BEGIN)], after[after.index(END) :]) == outside
    assert "| `attention.kv` KV memory, one layer at 64K tokens | dense 128 MiB;" in after


def test_update_is_idempotent(readme: Path, tmp_path: Path) -> None:
    results = write_results(tmp_path / "results", attention=ATTENTION, bus=BUS, rca_eval=RCA_EVAL)
    assert update_readme(readme, results)
    once = readme.read_text()
    assert update_readme(readme, results) == []
    assert readme.read_text() == once


def test_new_keys_go_after_their_neighbour_in_order(readme: Path, tmp_path: Path) -> None:
    results = write_results(tmp_path / "results", rca_eval=RCA_EVAL, loadtest_pipeline=PIPELINE)
    changed = update_readme(readme, results)
    assert changed == ["loadtest_pipeline", "rca_eval.accuracy", "rca_eval.latency"]
    keys = [line.split("`")[1] for line in table_lines(readme.read_text()) if line.startswith("| `")]
    # each goes after the closest key before it in ORDER that the table has: bus, and attention.kv
    assert keys == ["bus", "loadtest_pipeline", "attention.speedup", "attention.kv", *changed[1:], "kg"]
    hand_written = "| HATA hash training (hand-written) | 292 s | `faultline train hata` | same |"
    assert hand_written in readme.read_text()


def test_missing_markers_fail_loudly(tmp_path: Path) -> None:
    results = write_results(tmp_path / "results", bus=BUS)
    for text in (README_TEXT.replace(BEGIN, ""), README_TEXT.replace(END, ""), README_TEXT + BEGIN + "\n"):
        path = tmp_path / "README.md"
        path.write_text(text)
        with pytest.raises(ValueError, match="figures:"):
            update_readme(path, results)
        assert path.read_text() == text


def test_a_duplicated_key_fails_loudly(readme: Path, tmp_path: Path) -> None:
    text = readme.read_text().replace("| `kg` kg-builder", "| `bus` kg-builder")
    readme.write_text(text)
    with pytest.raises(ValueError, match="twice: bus"):
        update_readme(readme, write_results(tmp_path / "results", bus=BUS))


def test_an_unrenderable_result_keeps_its_rows(readme: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    results = write_results(tmp_path / "results", bus={"machine": "old"}, attention=ATTENTION)
    (results / "kg.json").write_text("{not json")
    before = readme.read_text()
    assert update_readme(readme, results) == ["attention.speedup", "attention.kv"]
    after = readme.read_text()
    for line in table_lines(before):
        if line.startswith(("| `bus`", "| `kg`")):
            assert line in after
    assert "bus.json: KeyError" in capsys.readouterr().err


def test_demo_summary_row_and_file_date_when_unstamped(readme: Path, tmp_path: Path) -> None:
    fault = {
        "injected": "delay:cartservice for 120 s",
        "detected_after_event_s": 30,
        "incident_after_s": 8.852,
        "report_after_s": 15.66,
        "kg_after_s": 16.01,
        "top_candidates": [{"service": "cartservice"}],
    }
    summary = tmp_path / "summary.json"
    summary.write_text(json.dumps({"system": "online-boutique", "faults": [fault, fault | {"incident_after_s": 11.0}]}))
    changed = update_readme(readme, tmp_path / "no-results", summary)
    assert changed == ["demo"]
    (line,) = [x for x in table_lines(readme.read_text()) if x.startswith("| `demo`")]
    assert "incident 8.9 / 11.0 s, RCA report 15.7 / 15.7 s" in line
    assert "machine not recorded" in line and "file written " in line
    # first in ORDER: the table's first row
    assert table_lines(readme.read_text())[4] == line


def test_run_each_saves_stamped_results_then_updates_the_table(
    readme: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import loadtests.bench as bench

    (tmp_path / "fake_bus_bench.py").write_text(
        "def run():\n    return " + repr({k: v for k, v in BUS.items() if k not in MACHINE}) + "\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(bench, "RESULTS", tmp_path / "results")
    monkeypatch.setattr(figures, "README", readme)
    monkeypatch.setattr(figures, "DEMO_SUMMARY", tmp_path / "no-summary.json")
    monkeypatch.setenv("FAULTLINE_BENCH_ROUNDS", "3")
    assert bench.run_each({"bus": "fake_bus_bench"}, None, kind="bench") == 0
    saved = json.loads((tmp_path / "results" / "bus.json").read_text())
    assert saved["env"] == {"FAULTLINE_BENCH_ROUNDS": "3"} and "load_at_start" in saved and "machine" in saved
    (line,) = [x for x in table_lines(readme.read_text()) if x.startswith("| `bus`")]
    assert "2,634 / 3,658 msg/s" in line and "`FAULTLINE_BENCH_ROUNDS=3 make bench BENCH=bus`" in line


def test_a_result_without_its_machine_keeps_the_machine_the_table_gives(readme: Path, tmp_path: Path) -> None:
    old_row = "| `rca_eval.accuracy` RCA, old | 0.7 | `faultline eval rca` | same, loaded |\n"
    text = readme.read_text().replace("| `kg` kg-builder", old_row + "| `kg` kg-builder")
    readme.write_text(text)
    changed = update_readme(readme, write_results(tmp_path / "results", rca_eval=RCA_EVAL))
    assert changed == ["rca_eval.accuracy", "rca_eval.latency"]
    lines = table_lines(readme.read_text())
    (accuracy,) = [x for x in lines if x.startswith("| `rca_eval.accuracy`")]
    (latency,) = [x for x in lines if x.startswith("| `rca_eval.latency`")]
    assert accuracy.startswith("| `rca_eval.accuracy` RCA AC@1 (MRR) over 8 cases") and accuracy.endswith(
        "| same, loaded |"
    )
    assert latency.endswith("| machine not recorded; file written " + latency.rsplit(" ", 2)[-2] + " |")
    assert update_readme(readme, tmp_path / "results") == []


def test_reliability_row_gives_the_verdicts_and_the_counts() -> None:
    result = {
        "nothing_lost": True,
        "no_incident_twice": True,
        "scenario": {"event_time_s": 1200, "faults": ["a", "b"], "agent_run": True},
        "kills": [
            {"service": "embedding", "restarted_after_s": 12.1},
            {"service": "detector", "restarted_after_s": 18.1},
        ],
        "counts": {
            "windows_due": 64,
            "windows_whole": 64,
            "incidents_per_fault": [1, 1],
            "incidents": 2,
            "reports": 2,
            "kg_updates": 2,
            "redelivered": 1,
            "dead_letters": 0,
        },
        "machine": "box x86_64 2 cores, Python 3.11.7",
        "finished_at": "2030-01-02T00:00:00Z",
    }
    (row,) = figures.loadtest_reliability(result)
    assert row.key == "loadtest_reliability" and row.key in ORDER
    assert row.figure.startswith("nothing lost, no incident twice: 64 of 64 windows whole, incidents per fault 1 / 1")
    assert row.figure.endswith("serving again 12–18 s after the kill")
    assert row.command == "`make chaos`"
    row.line()


def test_incident_eval_row_gives_each_policy_and_a_dash_for_no_detection() -> None:
    def policy(per_hour: float, detected: int, median: float | None) -> dict:
        return {
            "false_incidents_per_hour": per_hour,
            "settling_false_incidents_per_start": 1.0,
            "faults_detected": detected,
            "fault_to_incident": {"median_s": median, "p90_s": median},
            "top_suspect_is_faulted_at_open": 0.5 if detected else None,
        }

    result = {
        "system": "online-boutique",
        "normal": {"steady_hours": 5.72, "starts": 3},
        "faults": [{"kind": "cpu"}, {"kind": "delay"}],
        "open_after": {"2": policy(0.35, 2, 26.0), "10": policy(0.0, 0, None), "1": policy(4.2, 2, 12.4)},
        "wall_s": 512.3,
        **MACHINE,
    }
    (row,) = figures.incident_eval(result)
    assert row.key == "incident-eval" and row.key in ORDER
    assert "opening after 1 / 2 / 10 anomalous windows; 5.7 h of normal traffic" in row.what
    assert row.figure.startswith("false incidents 4.20 / 0.35 / 0.00 per hour, plus 1.0 / 1.0 / 1.0 per fresh start")
    assert "detected 2 / 2 / 0 of 2, fault start → incident median 12 / 26 / – s" in row.figure
    assert row.figure.endswith("top suspect is the faulted service 0.50 / 0.50 / – at opening")
    assert row.machine.endswith("2030-01-02 (512 s)")
    row.line()
