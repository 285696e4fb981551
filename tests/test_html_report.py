"""The HTML report in a real browser: headless Chromium (Debian's `chromium`, which .ci/run
installs) renders the page; the screenshot is not blank, every experiment's text is in the DOM, and
a click on a diff's summary opens it in place. Plus the page's own promises: self-contained,
escaped, atomic, and never an exception for the loop."""

import html
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from PIL import Image
from typer.testing import CliRunner

from autoresearch import analysis, html_report
from autoresearch.cli import app
from night import DIFF, TRIALS, write_night

BROWSER = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
needs_browser = pytest.mark.skipif(
    BROWSER is None and not os.environ.get("CI"), reason="no chromium here (apt-get install -y chromium)")


def chromium(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """One headless Chromium run with a private profile (no user data, no network needed)."""
    assert BROWSER, "chromium is missing: .ci/run installs it (apt-get install -y chromium)"
    command = [BROWSER, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
               "--disable-extensions", "--hide-scrollbars", f"--user-data-dir={cwd / 'profile'}", *args]
    result = subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stderr[-2000:]
    return result


@pytest.fixture
def night(tmp_path) -> Path:
    (tmp_path / "train.py").write_text("# the lab\n")
    return write_night(tmp_path / "results" / "night")


def test_the_page_is_self_contained_and_escapes_what_it_shows(night):
    path = html_report.write_html_report(night)
    assert path == night / "report.html"
    text = path.read_text(encoding="utf-8")
    assert "<script" not in text and "http://" not in text and "https://" not in text  # nothing fetched
    assert "src=" not in text and "<link" not in text
    assert html.escape("<script>alert('x')</script>", quote=True) in text  # the diff, escaped
    assert '<meta name="viewport"' in text and "@media (max-width: 700px)" in text  # phones
    for n, trial, status, val, extra in TRIALS:  # every experiment: description, verdict, reason
        assert html.escape(extra["description"]) in text
        if extra.get("reason"):
            assert html.escape(extra["reason"]) in text
        if extra.get("hypothesis"):
            assert html.escape(extra["hypothesis"], quote=True) in text
    assert "2.709930 ± 0.084710 (mean of 2 trials)" in text and "2.500000 (1 trial)" in text
    assert "thrown away" in text and "$0.0200" in text  # speculation and what it cost
    assert "training ran (cpu)" in text and "GPU" not in text.split("<h2>Progress")[0]
    assert not list(night.glob(".report.html.*"))  # the tmp file was renamed into place
    assert 'http-equiv="refresh"' not in text  # a finished run's page stays put


def test_the_page_of_a_running_run_reloads_itself(night):
    state = json.loads((night / "run.json").read_text())
    (night / "run.json").write_text(json.dumps({**state, "state": "running", "pid": os.getpid()}))
    text = html_report.write_html_report(night).read_text(encoding="utf-8")
    assert f'<meta http-equiv="refresh" content="{html_report.REFRESH_SECONDS}">' in text
    assert "figures are partial" in text


def test_a_failure_is_one_warning_never_an_exception(tmp_path):
    warnings = []
    assert html_report.write_html_report(tmp_path / "nothing", warn=warnings.append) is None
    assert len(warnings) == 1 and "no results file" in warnings[0]
    folder = write_night(tmp_path / "results" / "t")
    (folder / "report.html").mkdir()  # the rename cannot replace a folder
    assert html_report.write_html_report(folder, warn=warnings.append) is None
    assert len(warnings) == 2 and "report.html" in warnings[1]
    assert not list(folder.glob(".report.html.*"))


def test_report_html_option_says_where_it_wrote(night):
    page = night.parent.parent / "share" / "night.html"
    result = CliRunner().invoke(app, ["report", "--root", str(night.parent.parent), "--tag", "night",
                                      "--no-plot", "--html", str(page)])
    assert result.exit_code == 0, result.output
    assert f"wrote the HTML report to {page}" in result.stdout
    assert "warmup ratio 0.1" in page.read_text(encoding="utf-8")


def test_a_big_diff_is_cut_with_a_pointer_to_the_file(night):
    (night / "runs" / "0004" / "diff.patch").write_text("+x\n" * 20_000)
    text = html_report.write_html_report(night).read_text(encoding="utf-8")
    assert f"cut at {html_report.DIFF_CHARS:,} characters" in text
    assert str(night / "runs" / "0004" / "diff.patch") in text


@needs_browser
def test_chromium_renders_the_page_and_it_is_not_blank(night, tmp_path):
    page = html_report.write_html_report(night)
    for width, height in ((1280, 2000), (390, 2400)):  # a laptop and a phone
        shot = tmp_path / f"shot-{width}.png"
        chromium(f"--window-size={width},{height}", f"--screenshot={shot}", page.as_uri(), cwd=tmp_path)
        image = Image.open(shot).convert("RGB")
        assert image.size == (width, height)
        colours = image.getcolors(maxcolors=1_000_000)
        assert colours is not None and len(colours) > 50  # text, plot, tables: not one flat colour
        green = sum(n for n, (r, g, b) in colours if g > 150 and g - r > 60 and g - b > 40)
        assert green > 30  # the kept dots and the running best of the plot were drawn


@needs_browser
def test_in_chromium_every_experiment_is_on_the_page_and_a_diff_opens_in_place(night, tmp_path):
    page = html_report.write_html_report(night)
    # A copy of the page with a probe that clicks the first diff's summary, as a reader would,
    # and records what the browser laid out before and after (the page itself has no script).
    probe = """<script>
      const details = document.querySelector('details');
      const before = [details.open, details.getBoundingClientRect().height];
      details.querySelector('summary').click();
      const after = [details.open, details.getBoundingClientRect().height];
      document.body.setAttribute('data-probe', JSON.stringify({before, after, text: document.body.innerText}));
    </script></body>"""
    clicked = tmp_path / "clicked.html"
    clicked.write_text(page.read_text(encoding="utf-8").replace("</body>", probe), encoding="utf-8")
    dom = chromium("--dump-dom", clicked.as_uri(), cwd=tmp_path).stdout
    start = dom.index('data-probe="') + len('data-probe="')
    data = json.loads(html.unescape(dom[start:dom.index('"', start)]))
    assert data["before"][0] is False and data["before"][1] < 40  # closed: the summary line only
    assert data["after"][0] is True and data["after"][1] > data["before"][1] + 50  # open: its lines laid out
    text = data["text"]
    assert "<script>alert('x')</script>" in text  # shown as text, not run
    for n, trial, status, val, extra in TRIALS:
        assert extra["description"] in text
    assert "MATRIX_LR = 0.054" in text or "MATRIX_LR = 0.052" in text  # a diff's own lines
    assert "mean of 2 trials" in text and "exit 1: out of memory" in text


@needs_browser
def test_an_ab_page_shows_the_arms_side_by_side(tmp_path):
    summary = {
        "tag": "ab1", "baseline": {"tag": "ab1", "commit": "c0", "val_bpb": 1.0, "trials": 2, "gpu_seconds": 60.0},
        "noise": {"sigma": 0.001, "dof": 1}, "max_experiments": 3, "plot": None,
        "verdict": {"leader": "llm", "text": "llm beats hparam by 0.010000 ± 0.002000: beyond the noise."},
        "arms": [
            {"name": name, "tag": f"ab1-{name}", "spec": name, "backend": name, "model": "", "state": "done",
             "experiments": 3, "trials": 3, "counts": {"keep": k, "discard": 3 - k, "crash": 0},
             "best": {"experiment": 2, "commit": "c2", "val_bpb": best, "trials": 1, "description": "x"},
             "improvement": round(1.0 - best, 9), "uncertainty": 0.002, "beyond_noise": True, "cost_usd": 0.0,
             "input_tokens": 0, "output_tokens": 0, "gpu_seconds": 90.0,
             "running_best": [{"experiment": 0, "val_bpb": 1.0}, {"experiment": 2, "val_bpb": best}],
             "last_experiment": 3}
            for name, k, best in (("llm", 1, 0.98), ("hparam", 1, 0.99))],
    }
    page = html_report.write_ab_html(tmp_path / "ab.html", summary)
    dom = chromium("--dump-dom", page.as_uri(), cwd=tmp_path).stdout
    assert "Arms side by side" in dom and "llm beats hparam" in dom
    assert "llm: best 0.980000" in dom and "hparam: best 0.990000" in dom


def test_the_page_reads_the_same_figures_as_report(night):
    s = analysis.summarize(analysis.read_results(night / "results.tsv"), analysis.read_run(night), "night")
    text = html_report.page([(analysis.read_results(night / "results.tsv"), s)])
    assert f"{s['change_counts']['keep']}/{s['change_counts']['keep'] + s['change_counts']['discard']} changes" in text
    assert DIFF.splitlines()[0] in text


def test_upstreams_five_columns_and_an_empty_run_make_a_page_too(tmp_path):
    from test_report import UPSTREAM

    (tmp_path / "results.tsv").write_text(UPSTREAM, encoding="utf-8")
    table = analysis.read_results(tmp_path / "results.tsv")
    text = html_report.page([(table, analysis.summarize(table))])
    for line in UPSTREAM.splitlines()[1:]:
        assert html.escape(line.split("\t")[4]) in text  # every experiment, `$p=0.1$` included
    assert "<svg" in text and "3/5 changes" in text
    empty = analysis.Table(tmp_path / "none" / "results.tsv", list(analysis.UPSTREAM_COLUMNS))
    assert "No measured experiment yet" in html_report.page([(empty, analysis.summarize(empty, None, "x"))])


def test_several_runs_make_one_page_with_a_comparison_first(tmp_path):
    runs = []
    for tag in ("a", "b"):
        folder = write_night(tmp_path / "results" / tag)
        table = analysis.read_results(folder / "results.tsv")
        runs.append((table, analysis.summarize(table, analysis.read_run(folder), tag)))
    text = html_report.page(runs)
    assert text.index("<h2>Comparison</h2>") < text.index('<section id="run-a">') < text.index('<section id="run-b">')
