"""`autoresearch ab`, `report` and the plots on a declared target, through the real CLI, git and
processes: the life example (generations_per_s, higher is better, a noisy wall-time metric) and
the compress example (ratio, lower is better, deterministic), hparam arms. Nothing asserts a
timing: the winner expected is read from the arms' own results.tsv, and the A/B must name the
arm whose best is the best in the target's direction."""

import json
import re
import subprocess
from pathlib import Path

import pytest
from PIL import Image

from autoresearch import analysis
from autoresearch.ab_report import verdict
from autoresearch.ledger import best_of, group
from autoresearch.plot import arms_figure, progress_figure
from autoresearch.records import ResultsFile
from test_target_run import cli, env, example, header

ARMS = ["--arm", "hparam", "--arm", "hparam:1"]


def best_mean(repo: Path, tag: str) -> float:
    """The arm's best as its own ledger says: the mean of its latest keep."""
    return best_of(group(ResultsFile(repo / "results" / tag / "results.tsv").rows())).mean


def png_text(path: Path) -> dict:
    with Image.open(path) as image:
        return dict(image.text)


def climbs(values) -> bool:
    return all(b >= a for a, b in zip(values, values[1:]))


@pytest.fixture(scope="module")
def life_ab(tmp_path_factory):
    """One A/B on the life example: a shared baseline, then one experiment per arm. hparam's
    first idea (seed 0) is NEIGHBOUR_TABLE 0 -> 1, about 3x faster: a keep on any machine."""
    repo = example("life", tmp_path_factory.mktemp("ab"))
    done = cli(repo, "ab", "--tag", "x", *ARMS, "--max-experiments", "1")
    return repo, done


@pytest.mark.slow
def test_ab_on_a_max_target_names_the_metric_and_the_arm_with_the_highest_best(life_ab):
    repo, done = life_ab
    assert done.returncode == 0, done.stdout + done.stderr
    assert "[ab x] target: generations_per_s, higher is better (python bench.py)" in done.stdout
    for tag in ("x", "x-hparam", "x-hparam-1"):
        assert header(repo, tag)[1] == "generations_per_s"  # the seeded arms too
    bests = {name: best_mean(repo, f"x-{name}") for name in ("hparam", "hparam-1")}
    base = best_mean(repo, "x")
    assert bests["hparam"] > base  # NEIGHBOUR_TABLE was kept
    assert bests["hparam"] != bests["hparam-1"]
    leader = max(bests, key=bests.get)  # higher is better: the lowest best would be the wrong winner
    said = next(line for line in done.stdout.splitlines() if line.startswith(f"[ab x] {leader} "))
    assert "(higher is better)" in said and "results/x/ab.png" in said

    report = cli(repo, "report", "--tag", "x", "--json", "--no-plot")
    assert report.returncode == 0, report.stderr
    summary = json.loads(report.stdout)["ab"]
    assert (summary["metric"], summary["higher_is_better"]) == ("generations_per_s", True)
    assert summary["verdict"]["leader"] == leader
    for arm in summary["arms"]:
        assert arm["best"]["val_bpb"] == pytest.approx(bests[arm["name"]])
        assert arm["improvement"] == pytest.approx(bests[arm["name"]] - base)  # signed: positive is better
        assert climbs([p["val_bpb"] for p in arm["running_best"]])
    assert summary["arms"][0]["improvement"] > 0

    text = cli(repo, "report", "--tag", "x", "--no-plot")
    assert text.returncode == 0, text.stderr
    assert "metric:" in text.stdout and "generations_per_s (higher is better)" in text.stdout
    assert "best generations_per_s" in text.stdout and "improvement = best - baseline" in text.stdout
    assert "val_bpb" not in text.stdout
    status = cli(repo, "status")
    assert status.returncode == 0 and f"{bests['hparam']:.6f} generations_per_s (max)" in status.stdout

    # the comparison the A/B wrote: its plot and page name the metric and its direction
    plot = png_text(repo / "results/x/ab.png")
    assert plot["Description"] == "generations_per_s (higher is better)"
    assert "generations_per_s" in plot["Title"]
    page = (repo / "results/x/report.html").read_text()
    assert "generations_per_s (higher is better)" in page and f"{leader}: best" in page
    figure = arms_figure(summary)
    lines = {line.get_label().split(":")[0]: line for line in figure.axes[0].get_lines()}
    for name in bests:
        assert climbs(list(lines[name].get_ydata()))
        assert lines[name].get_ydata()[-1] == pytest.approx(bests[name])


@pytest.mark.slow
def test_the_progress_plot_of_a_max_run_climbs(life_ab, tmp_path):
    repo, done = life_ab
    assert done.returncode == 0, done.stdout + done.stderr
    page = tmp_path / "arm.html"
    report = cli(repo, "report", "--tag", "x-hparam", "--html", str(page))
    assert report.returncode == 0, report.stderr
    assert "generations_per_s (higher is better)" in report.stdout
    assert png_text(repo / "results/x-hparam/progress.png")["Description"] == "generations_per_s (higher is better)"

    folder = repo / "results" / "x-hparam"
    table = analysis.read_results(folder / "results.tsv")
    summary = analysis.summarize(table, analysis.read_run(folder), "x-hparam")
    running = next(line for line in progress_figure(table.rows, summary).axes[0].get_lines()
                   if line.get_label() == "Running best")
    ys = list(running.get_ydata())
    assert climbs(ys) and ys[-1] > ys[0] and ys[-1] == pytest.approx(best_mean(repo, "x-hparam"))

    # the page's SVG: the running best's path goes up the page (SVG y grows downwards)
    svg = page.read_text()
    assert "generations_per_s (higher is better)</text>" in svg
    path = re.search(r'<path d="([^"]+)" fill="none" stroke="#27ae60"', svg).group(1)
    heights = [float(v) for v in re.findall(r"V([\d.]+)", path)]
    start = float(re.match(r"M[\d.]+ ([\d.]+)", path).group(1))
    assert heights and all(h < start for h in heights)
    assert "gain = this one - previous kept mean" in svg


@pytest.mark.slow
def test_ab_on_a_min_target_picks_the_lowest_best(tmp_path):
    """compress is deterministic: hparam (seed 0) keeps WINDOW 64 -> 128 in its second experiment."""
    repo = example("compress", tmp_path)
    done = cli(repo, "ab", "--tag", "c", *ARMS, "--max-experiments", "2")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "[ab c] target: ratio, lower is better" in done.stdout
    bests = {name: best_mean(repo, f"c-{name}") for name in ("hparam", "hparam-1")}
    base = best_mean(repo, "c")
    report = cli(repo, "report", "--tag", "c", "--json", "--no-plot")
    assert report.returncode == 0, report.stderr
    summary = json.loads(report.stdout)["ab"]
    assert (summary["metric"], summary["higher_is_better"]) == ("ratio", False)
    for arm in summary["arms"]:
        assert arm["improvement"] == pytest.approx(base - bests[arm["name"]])
    assert bests["hparam"] < base and bests["hparam"] != bests["hparam-1"]  # WINDOW 64 -> 128: deterministic
    assert summary["verdict"]["leader"] == min(bests, key=bests.get)
    assert png_text(repo / "results/c/ab.png")["Description"] == "ratio (lower is better)"


def test_a_bad_toml_stops_the_ab_in_one_line_before_anything_is_made(tmp_path):
    repo = example("compress", tmp_path)
    toml = repo / "autoresearch.toml"
    toml.write_text(toml.read_text().replace('direction = "min"', 'direction = "up"'))
    subprocess.run(["git", "commit", "-qam", "bad"], cwd=repo, check=True, env=env())
    done = cli(repo, "ab", "--tag", "b", *ARMS, "--max-experiments", "1")
    assert done.returncode == 1
    assert "direction" in done.stderr and len(done.stderr.strip().splitlines()) == 1
    assert not (repo / "results").exists()


@pytest.mark.parametrize("higher, leader", [(True, "b"), (False, "a")])
def test_the_verdict_follows_the_direction(higher, leader):
    arms = [{"name": name, "best": {"val_bpb": value, "trials": 2}} for name, value in (("a", 10.0), ("b", 12.0))]
    said = verdict(arms, sigma=0.1, higher=higher)
    assert said["leader"] == leader and said["gap"] == pytest.approx(2.0) and said["beyond_noise"]
    assert ("higher is better" if higher else "lower is better") in said["text"]
