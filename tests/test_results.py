"""results.tsv, run.json and run.lock on real files, with a real second process for the lock."""

import os
import signal
import subprocess
import sys

import pytest

from autoresearch.errors import AutoresearchError
from autoresearch.records import COLUMNS, ResultsFile, Row, RunLock, RunState, utc_now


def keep_row(experiment: int, **kw) -> Row:
    base = dict(
        commit="abc1234",
        val_bpb=0.9979,
        memory_gb=44.0,
        status="keep",
        description="baseline",
        experiment=experiment,
        proposer="baseline",
        training_seconds=300.1,
        total_seconds=325.9,
        num_steps=953,
        mfu_percent=39.8,
        started_at="2026-11-22T07:30:00Z",
        wall_seconds=330.25,
        parent="abc1234",
    )
    base.update(kw)
    return Row(**base)


def test_columns_start_with_upstreams_five_and_match_row_fields():
    assert COLUMNS[:5] == ("commit", "val_bpb", "memory_gb", "status", "description")
    assert COLUMNS[20:26] == ("role", "trial", "seed", "mean_val_bpb", "delta", "sigma")  # schema 2, appended
    assert COLUMNS[26:31] == ("audit", "audit_val_bpb", "heldout_bpb", "audit_seconds", "sandbox")  # schema 3
    assert COLUMNS[31:34] == ("speculation", "run_seconds", "gpu_idle_seconds")  # schema 4, appended
    assert COLUMNS[34:] == ("metrics",)  # schema 5, appended
    assert tuple(keep_row(0).as_dict()) == COLUMNS


def test_row_formats_numbers_per_the_contract():
    fields = dict(zip(COLUMNS, keep_row(3, cost_usd=0.0123456789, input_tokens=1200).to_fields()))
    assert fields["val_bpb"] == "0.997900"
    assert fields["memory_gb"] == "44.0"
    assert fields["training_seconds"] == "300.1"
    assert fields["mfu_percent"] == "39.80"
    assert fields["num_steps"] == "953"
    assert fields["cost_usd"] == "0.012346"
    assert fields["wall_seconds"] == "330.2"
    assert fields["input_tokens"] == "1200"
    assert fields["experiment"] == "3"


def test_crash_row_reads_zero_and_empty_optionals():
    row = Row("def5678", float("nan"), 12.3, "crash", "bigger lr", 4, reason="timeout after 610 s")
    fields = dict(zip(COLUMNS, row.to_fields()))
    assert fields["val_bpb"] == "0.000000" and fields["memory_gb"] == "0.0"
    assert fields["training_seconds"] == "" and fields["num_steps"] == ""
    assert fields["reason"] == "timeout after 610 s"


def test_round_trip_through_the_file(tmp_path):
    results = ResultsFile(tmp_path / "t" / "results.tsv")
    assert results.rows() == []
    rows = [
        keep_row(0),
        keep_row(1, status="discard", val_bpb=1.01, description="wider mlp", model="gpt-x"),
        Row("0123abc", 0.0, 0.0, "crash", "deeper", 2, reason="exit 1: RuntimeError: boom"),
    ]
    for row in rows:
        results.append(row)
    text = results.path.read_text()
    assert text.startswith("commit\tval_bpb\tmemory_gb\tstatus\tdescription\texperiment\t")
    assert text.count("\n") == 4
    back = results.rows()
    assert [r.experiment for r in back] == [0, 1, 2]
    assert back[0].val_bpb == 0.9979 and back[0].num_steps == 953 and back[0].wall_seconds == 330.2
    assert back[1].status == "discard" and back[1].model == "gpt-x"
    assert back[2].reason == "exit 1: RuntimeError: boom" and back[2].training_seconds is None


def test_tabs_and_newlines_in_model_text_stay_on_one_row(tmp_path):
    results = ResultsFile(tmp_path / "results.tsv")
    results.append(
        keep_row(0, description="a\tb\r\nc", hypothesis="line one\nline two\n\n\tindented")
    )
    lines = results.path.read_text().split("\n")
    assert len(lines) == 3 and lines[2] == ""
    assert len(lines[1].split("\t")) == len(COLUMNS)
    row = results.rows()[0]
    assert row.description == "a b c"
    assert row.hypothesis == "line one line two indented"


def test_other_line_breaks_in_a_field_do_not_split_the_row_for_the_report(tmp_path):
    from autoresearch.analysis import read_results

    results = ResultsFile(tmp_path / "results.tsv")
    results.append(keep_row(0, reason="wrote files: a\u2028b", hypothesis="x\x0cy\x85z\x1ew"))
    table = read_results(results.path)  # splits lines like str.splitlines()
    assert table.malformed == [] and len(table.rows) == 1
    assert results.rows()[0].hypothesis == "x y z w"


def test_torn_last_line_is_ignored_then_cut_before_the_next_append(tmp_path):
    results = ResultsFile(tmp_path / "results.tsv")
    results.append(keep_row(0))
    results.append(keep_row(1))
    whole = results.path.read_bytes()
    torn = "\t".join(keep_row(2).to_fields())[:25]
    results.path.write_bytes(whole + torn.encode())  # as if killed mid-write
    assert [r.experiment for r in results.rows()] == [0, 1]
    results.append(keep_row(2, description="again"))
    assert results.path.read_bytes().startswith(whole)
    rows = results.rows()
    assert [(r.experiment, r.description) for r in rows] == [(0, "baseline"), (1, "baseline"), (2, "again")]


def test_torn_header_in_a_new_file_is_rewritten(tmp_path):
    path = tmp_path / "results.tsv"
    path.write_text("commit\tval_b")
    results = ResultsFile(path)
    assert results.rows() == []
    results.append(keep_row(0))
    assert [r.experiment for r in results.rows()] == [0]
    assert path.read_text().count("commit\t") == 1


def test_append_refuses_a_foreign_header(tmp_path):
    path = tmp_path / "results.tsv"
    path.write_text("commit\tval_bpb\tmemory_gb\tstatus\tdescription\nabc1234\t0.997900\t44.0\tkeep\tbaseline\n")
    results = ResultsFile(path)
    assert results.rows()[0].val_bpb == 0.9979  # upstream's five-column file still reads
    with pytest.raises(AutoresearchError, match="different header"):
        results.append(keep_row(1))


def test_a_malformed_middle_line_is_a_clear_error(tmp_path):
    results = ResultsFile(tmp_path / "results.tsv")
    results.append(keep_row(0))
    with open(results.path, "a") as f:
        f.write("garbage line\n")
    with pytest.raises(AutoresearchError, match=r"results.tsv:3 has 1 fields"):
        results.rows()


def test_append_fsyncs_the_row_and_the_new_directory(tmp_path, monkeypatch):
    synced = []
    real_fsync = os.fsync

    def spy(fd):
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", spy)
    results = ResultsFile(tmp_path / "new" / "results.tsv")
    results.append(keep_row(0))
    assert synced == [str(results.path), str(results.path.parent)]
    synced.clear()
    results.append(keep_row(1))
    assert synced == [str(results.path)]


def test_run_state_merges_and_is_replaced_atomically(tmp_path):
    path = tmp_path / "run.json"
    assert RunState.load(path) == {}
    RunState.save(path, tag="mar5", state="running", pid=os.getpid())
    state = RunState.save(path, state="paused", proposal_cost_usd=0.25)
    assert state == RunState.load(path)
    assert state["tag"] == "mar5" and state["state"] == "paused" and state["pid"] == os.getpid()
    assert state["updated_at"].endswith("Z")
    assert [p.name for p in tmp_path.iterdir()] == ["run.json"]  # no tmp file left behind


def test_corrupt_run_state_loads_as_empty(tmp_path):
    path = tmp_path / "run.json"
    path.write_text('{"tag": "mar')
    assert RunState.load(path) == {}
    path.write_text("[1, 2]")
    assert RunState.load(path) == {}


def test_running_state_with_a_dead_pid_reads_as_stopped():
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    assert RunState.effective_state({"state": "running", "pid": proc.pid}) == "stopped"
    assert RunState.effective_state({"state": "running", "pid": os.getpid()}) == "running"
    assert RunState.effective_state({"state": "paused", "pid": proc.pid}) == "paused"


def test_utc_now_format():
    assert len(utc_now()) == 20 and utc_now()[10] == "T" and utc_now().endswith("Z")


HOLD_LOCK = """
import sys, time
from pathlib import Path
from autoresearch.records import RunLock
lock = RunLock(Path(sys.argv[1]))
lock.acquire()
print("held", flush=True)
time.sleep(600)
"""


def test_lock_is_refused_while_another_process_holds_it_and_free_once_it_is_killed(tmp_path):
    path = tmp_path / "mar5" / "run.lock"
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, str(path)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(AutoresearchError, match=rf"run 'mar5' is already running \(pid {holder.pid}\)"):
            RunLock(path).acquire()
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    with RunLock(path) as lock:
        assert lock.held
        assert path.read_text().strip() == str(os.getpid())
    assert not lock.held


def test_second_lock_in_the_same_process_is_refused_until_released(tmp_path):
    path = tmp_path / "t" / "run.lock"
    first = RunLock(path)
    first.acquire()
    with pytest.raises(AutoresearchError, match="already running"):
        RunLock(path).acquire()
    first.release()
    second = RunLock(path)
    second.acquire()
    second.release()


def test_metrics_column_round_trips_names_and_numbers():
    from autoresearch.records import format_metrics, parse_metrics

    text = format_metrics({"peak_mb": 512.0, "seconds": 0.123456789, "cells": 4096})
    assert text == "peak_mb=512 seconds=0.123457 cells=4096"
    assert parse_metrics(text) == {"peak_mb": 512.0, "seconds": 0.123457, "cells": 4096.0}
    assert parse_metrics("") == {} and parse_metrics("odd x=1") == {"x": 1.0}
