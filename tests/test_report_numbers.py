"""Numbers that agree: wherever a verdict is shown (report tables, the live view's line, status,
the plot, the demo's table) it is shown on the value it was decided on, and counts are of
experiments and changes, the baseline not counted as a kept change."""

import io
from pathlib import Path

import pytest
from typer.testing import CliRunner

from autoresearch import analysis, plot, report
from autoresearch.cli import app
from autoresearch.demo import decided_on
from autoresearch.ledger import Ledger
from autoresearch.live import ViewState, header, phase_line, row_line
from night import write_night


@pytest.fixture
def night(tmp_path) -> Path:
    (tmp_path / "train.py").write_text("# the lab\n")
    return write_night(tmp_path / "results" / "night")


def summary_of(folder: Path) -> dict:
    return analysis.summarize(analysis.read_results(folder / "results.tsv"), analysis.read_run(folder), folder.name)


def text_report(s: dict) -> str:
    return report.render_plain(report.run_sections(s, 20))


def test_keep_rate_and_counts_leave_the_baseline_out(night):
    s = summary_of(night)
    assert s["counts"] == {"keep": 2, "discard": 2, "crash": 1}  # experiments by verdict, as before
    assert s["changes"] == 4 and s["change_counts"] == {"keep": 1, "discard": 2, "crash": 1}
    assert s["keep_rate"] == pytest.approx(1 / 3)
    text = text_report(s)
    assert "5  (the baseline and 4 changes: 1 kept, 2 discarded, 1 crashed; 7 trials)" in text
    assert "1/3 changes = 33.3%  (the baseline not counted)" in text
    assert analysis.status_line(night)["kept"] == 1


def test_every_table_shows_the_mean_a_verdict_was_decided_on(night):
    text = text_report(summary_of(night))
    held_out = text.split("Validation and held-out")[1].split("\n\n")[0]
    # the baseline was kept on the mean of 2.625220 and 2.794640; its audit re-read one trial
    assert "2.709930 ± 0.084710 (mean of 2 trials)     2.794700" in held_out
    assert "2.500000 (1 trial)" in held_out
    kept = text.split("Kept experiments")[1].split("\n\n")[0]
    assert "2.709930 ± 0.084710       2" in kept


def test_the_console_line_prints_the_delta_the_rule_used():
    row = {"experiment": 1, "trial": 2, "status": "discard", "val_bpb": 2.796885, "mean_val_bpb": 2.710509,
           "delta": -0.000579, "description": "raise LR"}
    line = row_line(row, 0.086955)  # the trial's own distance from the best: not what decided
    assert "mean=2.710509 (-0.000579 vs the best, on the mean of 2 trials)" in line and "+0.086955" not in line
    single = {"experiment": 2, "trial": 1, "status": "keep", "val_bpb": 0.99, "delta": -0.002, "description": "x"}
    assert "(-0.002000 vs the best, on 1 trial)" in row_line(single, -0.002)
    old = {"experiment": 3, "trial": 1, "status": "keep", "val_bpb": 0.99, "description": "x"}  # no delta column
    assert "(-0.001000)" in row_line(old, -0.001)


def test_the_live_view_says_evaluating_after_the_budget_not_zero_left():
    state = ViewState(tag="t", experiment=3, phase="training", phase_since=100.0, budget=15.0, timeout=60.0)
    assert "training 0:10 elapsed, ~0:05 of budget left" in phase_line(state, 110.0)
    late = phase_line(state, 118.0)
    assert "evaluating" in late and "0:00 of budget left" not in late and "0:18 elapsed" in late
    state.phase, state.budget = "auditing", None
    assert phase_line(state, 112.0) == "[0003] auditing 0:12"


def test_the_live_view_counts_kept_changes_not_the_baseline():
    state = ViewState(tag="t")
    state.add_row({"experiment": 0, "status": "keep", "role": "repeat", "proposer": "baseline"})
    state.add_row({"experiment": 1, "status": "discard", "role": "candidate", "proposer": "hparam"})
    console_text = io.StringIO()
    from rich.console import Console

    Console(file=console_text, width=200).print(header(state, state.started))
    assert "0 kept, 1 discarded, 0 crashed besides the baseline; 2 trials" in console_text.getvalue()


def test_the_plot_puts_discards_at_their_mean_and_counts_experiments(night):
    rows = analysis.read_results(night / "results.tsv").rows
    assert plot._discards(rows) == [(1, pytest.approx(2.709)), (2, pytest.approx(2.9))]


def test_a_cpu_run_says_training_and_its_real_duration(night):
    s = summary_of(night)
    assert s["timing"]["device"] == "cpu"
    pair = report.busy_pair(s["timing"])
    assert pair[0] == "training busy" and "GPU" not in pair[1]
    assert pair[1].startswith("training ran (cpu) 90.9% of 13 min 50 s")
    gpu = write_night(night.parent / "gpu", device="cuda:NVIDIA H100 80GB HBM3")
    assert report.busy_pair(summary_of(gpu)["timing"])[1].startswith("the GPU trained 90.9% of 13 min 50 s")


def test_the_report_says_what_speculation_prepared_and_threw_away(night):
    s = summary_of(night)
    assert s["speculation"] == {"prepared": 4, "used": 1, "rebased": 1, "discarded": 1, "failed": 1, "fresh": 0,
                                "discarded_cost_usd": 0.02, "proposal_cost_usd": 0.025}
    text = text_report(s)
    assert "thrown away:" in text and "1 (overlapped a newer best; asked again), cost $0.0200" in text
    assert "prepared:" in text and "4 of 4 changes (0 asked only after the previous training)" in text
    assert "$0.0250 (run.json: thrown-away and failed asks)" in text


def test_a_torn_last_line_is_one_note_in_report_and_status(night):
    with open(night / "results.tsv", "a", encoding="utf-8") as f:
        f.write("c9\t2.4")  # a write cut short by a kill
    root = night.parent.parent
    out = CliRunner().invoke(app, ["report", "--root", str(root), "--tag", "night", "--no-plot"])
    assert out.exit_code == 0, out.output
    notes = [line for line in out.stdout.splitlines() if line.startswith("note:")]
    assert len(notes) == 1 and "line 9 was cut off mid-write" in notes[0]
    status = CliRunner().invoke(app, ["status", "--root", str(root)])
    assert [line for line in status.stdout.splitlines() if line.startswith("note:")] == [
        f"note: {night / 'results.tsv'} line 9 was cut off mid-write (a run killed while appending); "
        "skipped, and the next append of that run removes it"]


def test_the_demo_table_names_what_each_verdict_was_decided_on(night):
    ledger = Ledger(night)
    experiments = {e.number: e for e in ledger.experiments()}
    cells = [decided_on(row, experiments[row.experiment]) for row in ledger.rows()]
    assert cells == ["", "2.709930 (2)", "", "2.709000 (2)", "2.900000 (1)", "", "2.500000 (1)"]


def test_run_help_keeps_the_ray_extra_in_brackets():
    result = CliRunner().invoke(app, ["run", "--help"], env={"COLUMNS": "300", "TERM": "dumb"})
    assert "Needs autoresearch[ray]." in " ".join(result.stdout.split())
