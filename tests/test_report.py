"""`autoresearch report` / `status` on small results.tsv files written here: figures, outputs, bad
input. The CLI runs through typer's CliRunner and as a real `python -m autoresearch` process."""

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import matplotlib.image
import numpy as np
import pytest
from typer.testing import CliRunner

from autoresearch import analysis, plot, report
from autoresearch.records import COLUMNS, ResultsFile, Row
from autoresearch.cli import app
from autoresearch.errors import AutoresearchError

UPSTREAM = """commit\tval_bpb\tmemory_gb\tstatus\tdescription
a1b2c3d\t0.997900\t44.0\tkeep\tbaseline
b2c3d4e\t0.993200\t44.2\tkeep\tincrease LR to 0.04
c3d4e5f\t1.005000\t44.0\tdiscard\tswitch to GeLU activation
d4e5f6a\t0.000000\t0.0\tcrash\tdouble model width (OOM)
e5f6a7b\t0.992900\t44.1\tkeep\tchange seed to 43
f6a7b8c\t0.985000\t30.1\tkeep\thalve batch size
a7b8c9d\t0.986100\t30.2\tdiscard\tadd dropout $p=0.1$
"""

LONG = "réglage du taux d'apprentissage 学习率 🚀 " * 20  # ~800 characters


def ours(rows: list[dict]) -> str:
    """A results.tsv in our 20-column format; rows give the fields that matter to a test."""
    lines = ["\t".join(COLUMNS)]
    for i, row in enumerate(rows):
        full = {c: "" for c in COLUMNS} | {"experiment": str(i), "input_tokens": "0", "output_tokens": "0",
                                           "cost_usd": "0.000000", "memory_gb": "40.0", "commit": f"c{i:06d}"}
        full.update(row)
        lines.append("\t".join(full[c] for c in COLUMNS))
    return "\n".join(lines) + "\n"


OURS = ours([
    dict(val_bpb="1.100000", status="keep", description="baseline", proposer="baseline",
         started_at="2026-11-22T00:00:00Z", wall_seconds="600.0", training_seconds="300.0"),
    dict(val_bpb="1.090000", status="keep", description=LONG, proposer="openai", model="gpt-5",
         input_tokens="1000", output_tokens="500", cost_usd="0.010000",
         started_at="2026-11-22T00:10:00Z", wall_seconds="600.0", training_seconds="300.0"),
    dict(val_bpb="0.000000", status="crash", description="bigger model", proposer="openai", model="gpt-5",
         reason="exit 1: CUDA out of memory", input_tokens="1000", output_tokens="500", cost_usd="0.010000",
         started_at="2026-11-22T00:20:00Z", wall_seconds="600.0"),
    dict(val_bpb="1.095000", status="discard", description="no bias", proposer="hparam",
         started_at="2026-11-22T00:30:00Z", wall_seconds="600.0", training_seconds="300.0"),
    dict(val_bpb="1.089900", status="keep", description="tiny tweak", proposer="hparam",
         started_at="2026-11-22T00:40:00Z", wall_seconds="600.0", training_seconds="300.0"),
    dict(val_bpb="0.000000", status="crash", description="lr 10", proposer="anthropic", model="claude",
         reason="diverged", input_tokens="2000", output_tokens="1000", cost_usd="0.030000",
         started_at="2026-11-22T00:50:00Z", wall_seconds="600.0"),
])


@pytest.fixture
def checkout(tmp_path) -> Path:
    """A user's checkout: train.py and results/ with two runs, `old` (hparam) and `new`."""
    (tmp_path / "train.py").write_text("# the file the proposer edits\n")
    for tag, text in (("old", OURS), ("new", UPSTREAM)):
        (tmp_path / "results" / tag).mkdir(parents=True)
        (tmp_path / "results" / tag / "results.tsv").write_text(text, encoding="utf-8")
    os.utime(tmp_path / "results" / "old" / "results.tsv", (1_700_000_000, 1_700_000_000))
    return tmp_path


def write(tmp_path, text: str, name="results.tsv") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def cli(*args, cwd: Path | None = None):
    old = Path.cwd()
    try:
        if cwd:
            os.chdir(cwd)
        return CliRunner().invoke(app, list(args))
    finally:
        os.chdir(old)


# ---------------------------------------------------------------------------
# Figures
# ---------------------------------------------------------------------------


def test_upstream_format_gives_the_notebooks_figures(tmp_path):
    s = analysis.summarize(analysis.read_results(write(tmp_path, UPSTREAM)))
    assert s["format"] == "upstream"
    assert s["experiments"] == 7
    assert s["counts"] == {"keep": 4, "discard": 2, "crash": 1}
    assert s["keep_rate"] == pytest.approx(3 / 5)  # the baseline (row 0 by convention) is no change
    assert s["changes"] == 6 and s["change_counts"] == {"keep": 3, "discard": 2, "crash": 1}
    assert s["baseline"]["val_bpb"] == 0.9979 and s["baseline"]["experiment"] == 0
    assert s["best"]["val_bpb"] == 0.985 and s["best"]["description"] == "halve batch size"
    assert s["improvement"] == pytest.approx(0.0129)
    assert s["improvement_pct"] == pytest.approx(100 * 0.0129 / 0.9979)
    assert [(k["experiment"], k["delta"]) for k in s["kept"]] == [
        (0, None), (1, pytest.approx(0.0047)), (4, pytest.approx(0.0003)), (5, pytest.approx(0.0079))]
    assert [k["experiment"] for k in s["top_hits"]] == [5, 1, 4]
    # exactly 3e-4 is not below the noise threshold; the seed change would be at 2.9e-4
    assert [k["within_noise"] for k in s["kept"]] == [False, False, False, False]
    assert analysis.summarize(analysis.read_results(write(tmp_path, UPSTREAM)), noise=4e-4)["within_noise"] == 1
    assert s["by_proposer"] == [] and s["usage"]["cost_usd"] is None
    assert s["crash_reasons"] == [{"reason": "unknown", "count": 1}]


def test_our_columns_give_rate_cost_reasons_and_proposers(tmp_path):
    s = analysis.summarize(analysis.read_results(write(tmp_path, OURS)))
    assert s["format"] == "autoresearch"
    assert s["timing"]["elapsed_hours"] == pytest.approx(1.0)  # 00:00 to 00:50 + 600 s
    assert s["timing"]["experiments_per_hour"] == pytest.approx(6.0)
    assert s["timing"]["mean_wall_seconds"] == pytest.approx(600.0)
    assert s["crash_reasons"] == [{"reason": "exit 1: CUDA out of memory", "count": 1},
                                  {"reason": "diverged", "count": 1}]
    assert s["usage"]["cost_usd"] == pytest.approx(0.05)
    assert s["usage"]["input_tokens"] == 4000 and s["usage"]["output_tokens"] == 2000
    assert s["improvements"] == 2 and s["within_noise"] == 1  # 1.0900 -> 1.0899 is noise
    assert s["usage"]["cost_per_improvement_usd"] == pytest.approx(0.025)
    assert s["usage"]["tokens_per_improvement"] == pytest.approx(3000)
    groups = {(g["proposer"], g["model"]): g for g in s["by_proposer"]}
    assert set(groups) == {("baseline", ""), ("openai", "gpt-5"), ("hparam", ""), ("anthropic", "claude")}
    assert groups[("openai", "gpt-5")].items() >= {"experiments": 2, "keep": 1, "crash": 1, "keep_rate": 1.0}.items()
    assert groups[("openai", "gpt-5")]["improvement"] == pytest.approx(0.01)
    assert groups[("hparam", "")]["keep_rate"] == 0.5
    assert groups[("anthropic", "claude")]["cost_usd"] == pytest.approx(0.03)
    assert s["best"]["description"] == "tiny tweak" and s["kept"][1]["description"] == LONG.strip()


def test_reads_what_the_loops_results_writer_appends(tmp_path):
    ledger = ResultsFile(tmp_path / "results.tsv")
    ledger.append(Row("a1b2c3d", 0.9979, 44.0, "keep", "baseline", 0, proposer="baseline",
                      started_at="2026-11-22T00:00:00Z", wall_seconds=330.0, training_seconds=300.1))
    ledger.append(Row("b2c3d4e", 0.0, 0.0, "crash", "tab\there", 1, proposer="openai", model="gpt-5",
                      reason="timeout", input_tokens=900, output_tokens=100, cost_usd=0.002,
                      started_at="2026-11-22T00:05:30Z", wall_seconds=600.0))
    ledger.append(Row("c3d4e5f", 0.9950, 44.1, "keep", "deeper\nmodel", 2, proposer="openai", model="gpt-5",
                      input_tokens=1000, output_tokens=200, cost_usd=0.003, started_at="2026-11-22T00:15:30Z",
                      wall_seconds=330.0, training_seconds=300.0))
    table = analysis.read_results(ledger.path)
    assert table.malformed == [] and table.columns == list(COLUMNS)
    s = analysis.summarize(table)
    assert s["counts"] == {"keep": 2, "discard": 0, "crash": 1}
    assert s["best"]["description"] == "deeper model" and s["improvement"] == pytest.approx(0.0029)
    assert s["crash_reasons"] == [{"reason": "timeout", "count": 1}]
    assert s["usage"]["cost_per_improvement_usd"] == pytest.approx(0.005)
    assert s["timing"]["elapsed_hours"] == pytest.approx(0.35)  # 00:00 to 00:15:30 + 330 s


def test_run_state_comes_from_run_json_and_a_dead_pid_reads_stopped(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    for state, pid, expected in (("running", os.getpid(), "running"), ("running", dead.pid, "stopped"),
                                 ("paused", None, "paused"), ("done", None, "done")):
        (tmp_path / "run.json").write_text(json.dumps({"state": state, "pid": pid, "tag": "t"}))
        run = analysis.read_run(tmp_path)
        assert run["state"] == expected and run["recorded_state"] == state
    assert analysis.read_run(tmp_path / "nowhere") is None


# ---------------------------------------------------------------------------
# Outputs
# ---------------------------------------------------------------------------


def test_plain_text_report_when_not_a_terminal(checkout):
    result = cli("report", "--tag", "new", "--no-plot", cwd=checkout / "results")
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert "experiments:" in out and "7  (the baseline and 6 changes: 3 kept, 2 discarded, 1 crashed; 7 trials)" in out
    assert "3/5 changes = 60.0%" in out and "0.012900 (1.29%)" in out
    assert "best experiment:" in out and "halve batch size" in out
    assert "+0.007900" in out and "total over baseline" in out
    assert "\x1b[" not in out and "┃" not in out  # no colours, no box drawing


def test_rich_tables_on_a_terminal():
    class Terminal(io.StringIO):
        def isatty(self):
            return True

    s = analysis.summarize(analysis.Table(Path("x.tsv"), list(analysis.UPSTREAM_COLUMNS)))
    out = Terminal()
    report.render(report.run_sections(s, 20), out)
    assert "nothing kept yet" in out.getvalue()
    out = Terminal()
    report.render([report.Section("T", headers=["a", "b"], rows=[["1", "2"]])], out)
    assert "┃" in out.getvalue() or "│" in out.getvalue()


def test_json_summary_is_stable_and_complete(checkout):
    result = cli("report", "--tag", "old", "--json", "--no-plot", "--root", str(checkout))
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["schema_version"] == report.SCHEMA_VERSION == 3
    (run,) = data["runs"]
    assert set(run) == {
        "source", "tag", "format", "state", "run", "experiments", "counts", "keep_rate", "baseline", "best",
        "improvement", "improvement_pct", "noise_threshold", "improvements", "within_noise", "kept",
        "top_hits", "timing", "crash_reasons", "usage", "by_proposer", "malformed", "torn_line", "plot",
        "trials", "noise", "heldout", "changes", "change_counts", "speculation", "metric", "higher_is_better"}
    assert run["metric"] == "val_bpb" and run["higher_is_better"] is False
    assert run["tag"] == "old" and run["best"]["val_bpb"] == 1.0899
    assert run["kept"][1]["description"] == LONG.strip()  # unicode, unabridged
    assert run["source"] == str(checkout / "results" / "old" / "results.tsv")


def test_markdown_embeds_the_plot_by_relative_path_and_the_png_is_a_real_figure(checkout):
    md = checkout / "share" / "night.md"
    result = cli("report", "--tag", "old", "--markdown", str(md), cwd=checkout)
    assert result.exit_code == 0, result.output
    png = checkout / "results" / "old" / "progress.png"
    text = md.read_text(encoding="utf-8")
    assert "![progress](../results/old/progress.png)" in text
    assert "| keep rate | 2/3 changes = 66.7%  (the baseline not counted) |" in text and "学习率" in text
    assert result.stdout.strip().endswith(f"wrote the Markdown report to {md}")
    assert png.stat().st_size > 20_000
    image = matplotlib.image.imread(png)
    assert image.shape[:2] == (plot.SIZE[1] * plot.DPI, plot.SIZE[0] * plot.DPI)
    assert len(np.unique(image.reshape(-1, image.shape[2]), axis=0)) > 50
    green = np.all(np.abs(image[..., :3] - np.array([0x2E, 0xCC, 0x71]) / 255) < 0.02, axis=-1)
    assert green.sum() > 100  # the kept dots are drawn


def test_plot_path_option_and_title(tmp_path):
    path = write(tmp_path, UPSTREAM)
    result = cli("report", "--results", str(path), "--plot", str(tmp_path / "figs" / "p.png"), "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["runs"][0]["plot"] == str(tmp_path / "figs" / "p.png")
    assert (tmp_path / "figs" / "p.png").stat().st_size > 20_000
    assert plot.y_range(1.0, 0.9) == pytest.approx((0.885, 1.015))
    assert plot.shorten(LONG).endswith("...") and len(plot.shorten(LONG)) == 45


def test_several_tags_compare_side_by_side(checkout):
    result = cli("report", "--tag", "old", "--tag", "new", "--root", str(checkout))
    assert result.exit_code == 0, result.output
    comparison = result.stdout.split("\n\n")[0]
    assert comparison.startswith("Comparison") and "old" in comparison and "new" in comparison
    assert "0.985000" in comparison and "1.089900" in comparison and "hparam" in comparison
    assert (checkout / "results" / "compare-old-vs-new.png").stat().st_size > 20_000
    assert (checkout / "results" / "new" / "progress.png").is_file()


def test_default_is_the_most_recent_run_found_from_a_subfolder(checkout):
    (checkout / "sub" / "deeper").mkdir(parents=True)
    result = cli("report", "--json", "--no-plot", cwd=checkout / "sub" / "deeper")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["runs"][0]["tag"] == "new"


def test_status_lists_every_run_with_state_count_and_best(checkout):
    (checkout / "results" / "new" / "run.json").write_text(json.dumps(
        {"tag": "new", "state": "running", "pid": os.getpid(), "proposer": "openai", "model": "gpt-5",
         "updated_at": "2026-11-22T08:00:00Z"}))
    (checkout / "results" / "old" / "run.json").write_text(json.dumps({"tag": "old", "state": "done"}))
    (checkout / "results" / "empty").mkdir()  # not a run: no results.tsv, no run.json
    result = cli("status", "--json", "--root", str(checkout))
    assert result.exit_code == 0, result.output
    runs = {r["tag"]: r for r in json.loads(result.stdout)["runs"]}
    assert set(runs) == {"old", "new"}
    assert runs["new"].items() >= {"state": "running", "experiments": 7, "kept": 3, "best_val_bpb": 0.985}.items()
    assert runs["old"]["state"] == "done" and runs["old"]["best_val_bpb"] == 1.0899
    text = cli("status", cwd=checkout).stdout
    assert "running" in text and "done" in text and "openai gpt-5" in text


def test_a_running_run_is_marked_as_such_in_the_report(checkout):
    (checkout / "results" / "new" / "run.json").write_text(json.dumps(
        {"tag": "new", "state": "running", "pid": os.getpid(), "updated_at": "2026-11-22T08:00:00Z"}))
    result = cli("report", "--tag", "new", "--no-plot", "--root", str(checkout))
    assert "running (pid" in result.stdout and "figures are partial" in result.stdout


def test_a_run_still_training_its_baseline_reports_no_experiments_yet(checkout):
    (checkout / "results" / "fresh").mkdir()
    (checkout / "results" / "fresh" / "run.json").write_text(json.dumps(
        {"tag": "fresh", "state": "running", "pid": os.getpid()}))
    result = cli("report", "--tag", "fresh", "--no-plot", "--root", str(checkout))
    assert result.exit_code == 0, result.output
    assert "running (pid" in result.stdout and "No experiments yet: nothing kept yet." in result.stdout


# ---------------------------------------------------------------------------
# Bad input: one line and a non-zero exit, or a clear "nothing kept yet"
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("text, message", [
    (None, "no results file at"),
    ("", "is empty"),
    ("\n\n", "is empty"),
    ("commit\tval_bpb\tstatus\n", "missing column(s) memory_gb, description"),
])
def test_unreadable_files_end_in_one_line_and_exit_1(tmp_path, text, message):
    path = tmp_path / "results.tsv"
    if text is not None:
        path.write_text(text)
    result = cli("report", "--results", str(path))
    assert result.exit_code == 1
    assert result.stdout == ""
    assert result.stderr.count("\n") == 1 and message in result.stderr and result.stderr.startswith("error: ")


def test_unknown_tag_names_the_known_ones(checkout):
    result = cli("report", "--tag", "nope", "--root", str(checkout))
    assert result.exit_code == 1
    assert "unknown tag 'nope'" in result.stderr and "new, old" in result.stderr


def test_outside_a_checkout_says_where_it_looked(tmp_path):
    result = cli("report", cwd=tmp_path)
    assert result.exit_code == 1 and "no folder with train.py and results/" in result.stderr


def test_header_only_is_a_nothing_kept_yet_report(tmp_path):
    result = cli("report", "--results", str(write(tmp_path, UPSTREAM.splitlines()[0] + "\n")), "--no-plot")
    assert result.exit_code == 0
    assert "No experiments yet: nothing kept yet." in result.stdout


def test_all_crashed_is_a_nothing_kept_yet_report_with_a_plot(tmp_path):
    text = UPSTREAM.splitlines()[0] + "\n" + "".join(
        f"c{i}\t0.000000\t0.0\tcrash\ttry {i}\n" for i in range(3))
    result = cli("report", "--results", str(write(tmp_path, text)), "--json")
    assert result.exit_code == 0, result.output
    run = json.loads(result.stdout)["runs"][0]
    assert run["baseline"] is None and run["best"] is None and run["keep_rate"] is None
    assert run["counts"]["crash"] == 3 and Path(run["plot"]).stat().st_size > 10_000
    text_out = cli("report", "--results", str(tmp_path / "results.tsv"), "--no-plot").stdout
    assert "All 3 experiments crashed: nothing kept yet." in text_out


def test_malformed_rows_are_named_by_line_and_valid_rows_still_count(tmp_path):
    lines = UPSTREAM.splitlines()
    lines.insert(3, "deadbee\t0.99\tkeep")  # line 4: three fields
    lines.insert(5, "feedbee\tabc\t44.0\tdiscard\tnon-numeric")  # line 6
    lines.insert(6, "feedbe2\t0.99\t44.0\tmaybe\tbad status")  # line 7
    path = write(tmp_path, "\n".join(lines) + "\n")
    table = analysis.read_results(path)
    assert table.malformed == [(4, "expected 5 fields, found 3"), (6, "val_bpb 'abc' is not a positive number"),
                               (7, "status 'maybe' is not keep, discard, crash or trial")]
    assert len(table.rows) == 7
    result = cli("report", "--results", str(path), "--no-plot")
    assert result.exit_code == 1
    assert "7  (the baseline and 6 changes: 3 kept, 2 discarded, 1 crashed; 7 trials)" in result.stdout  # the report of the valid rows
    assert result.stderr.count("\n") == 1
    assert "3 malformed row(s) skipped" in result.stderr and "line 4" in result.stderr and "line 7" in result.stderr


def test_a_torn_last_line_from_a_killed_writer_is_skipped_quietly(tmp_path):
    table = analysis.read_results(write(tmp_path, UPSTREAM + "0123abc\t0.99"))
    assert table.malformed == [] and table.torn_line == 9 and len(table.rows) == 7
    with_newline = analysis.read_results(write(tmp_path, UPSTREAM + "0123abc\t0.99\n"))
    assert with_newline.malformed == [(9, "expected 5 fields, found 2")]


def test_real_process_exit_codes_and_no_traceback(tmp_path):
    def run(*args):
        return subprocess.run([sys.executable, "-m", "autoresearch", *args], capture_output=True, text=True,
                              cwd=tmp_path)

    bad = run("report", "--results", "missing.tsv")
    assert bad.returncode == 1 and bad.stderr == "error: no results file at missing.tsv\n"
    write(tmp_path, UPSTREAM.replace("0.993200", "1e999"))
    weird = run("report", "--results", "results.tsv", "--no-plot")
    assert weird.returncode == 1 and "Traceback" not in weird.stderr and "line 3" in weird.stderr
    good = run("report", "--results", "results.tsv", "--no-plot", "--json")
    assert json.loads(good.stdout)["runs"][0]["experiments"] == 6


def test_unwritable_plot_is_a_one_line_error(tmp_path):
    (tmp_path / "file").write_text("")
    with pytest.raises(AutoresearchError, match="cannot write the plot"):
        report.run_report(results=[write(tmp_path, UPSTREAM)], plot=tmp_path / "file" / "p.png", out=io.StringIO())


def test_windows_line_endings_a_bom_and_upper_case_status_read_like_upstream(tmp_path):
    text = "\ufeff" + UPSTREAM.replace("\tkeep\t", "\tKEEP \t").replace("\n", "\r\n")
    s = analysis.summarize(analysis.read_results(write(tmp_path, text)))
    assert s["counts"] == {"keep": 4, "discard": 2, "crash": 1} and s["best"]["val_bpb"] == 0.985
    assert s["best"]["description"] == "halve batch size"
