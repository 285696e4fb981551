"""progress.png in the style of upstream's analysis notebook: discards as faint grey dots, keeps
as green dots with a black edge, the running best as a step line, kept points annotated, y range
focused between baseline and best. Headless (Agg); matplotlib is imported only when plotting so
`autoresearch --help` stays fast.
"""

import warnings
from pathlib import Path

from autoresearch.errors import AutoresearchError

SIZE = (16, 8)  # inches
DPI = 100
MAX_LABELS = 60  # beyond this the labels pile up into a smear; the biggest wins keep theirs
LABEL_CHARS = 45
# fixed margins instead of tight_layout(): that costs a whole extra draw (~0.3 s at 10,000 points)
MARGINS = dict(left=0.06, right=0.985, bottom=0.075, top=0.94)


def _figure():
    """A 16x8 figure on the Agg canvas, made without pyplot: no global state, no GUI backend."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=SIZE)
    FigureCanvasAgg(fig)
    fig.subplots_adjust(**MARGINS)
    return fig, fig.subplots()


def shorten(text: str, limit: int = LABEL_CHARS) -> str:
    text = " ".join(str(text or "").split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def metric_label(metric: str | None, higher: bool) -> str:
    """The y axis: the run's metric and its direction (the lab's val_bpb as upstream names it)."""
    metric = metric or "val_bpb"
    if metric == "val_bpb" and not higher:
        return "Validation BPB (lower is better)"
    return f"{metric} ({'higher' if higher else 'lower'} is better)"


def y_range(baseline: float, best: float) -> tuple[float, float]:
    """From just below the best to just above the baseline (15% margin, never zero-height)."""
    low, high = sorted((baseline, best))  # a higher-is-better metric's best is above its baseline
    margin = (high - low) * 0.15
    if margin <= 0:
        margin = max(abs(baseline) * 0.002, 1e-4)
    return low - margin, high + margin


def _draw_run(ax, rows: list[dict], kept: list[dict], color: str, label: str | None, labels: bool,
              higher_is_better: bool = False):
    valid = [r for r in rows if r["status"] != "crash"]
    discards = _discards(rows)
    # plot() with a marker draws 10,000 dots far faster than scatter(); it looks the same (s=12)
    ax.plot([d[0] for d in discards], [d[1] for d in discards], linestyle="none",
            marker="o", markersize=12 ** 0.5, markeredgewidth=0, color="#cccccc", alpha=0.5, zorder=2,
            label=None if label else "Discarded")
    ax.scatter([k["experiment"] for k in kept], [k["val_bpb"] for k in kept], c=color, s=50,
               zorder=4, edgecolors="black", linewidths=0.5, label=f"Kept ({label})" if label else "Kept")
    if kept:
        xs, ys, best = [], [], -float("inf") if higher_is_better else float("inf")
        for k in kept:
            best = max(best, k["val_bpb"]) if higher_is_better else min(best, k["val_bpb"])
            xs.append(k["experiment"])
            ys.append(best)
        last = max(r["experiment"] for r in valid)
        xs.append(last)  # the best holds until the last experiment
        ys.append(best)
        ax.step(xs, ys, where="post", color="#27ae60" if not label else color, linewidth=2,
                alpha=0.7, zorder=3, label=f"Running best ({label})" if label else "Running best")
    if labels:
        ranked = sorted(kept, key=lambda k: -(k["delta"] or 0))[:MAX_LABELS]
        for k in ranked:
            ax.annotate(shorten(k["description"]), (k["experiment"], k["val_bpb"]),
                        textcoords="offset points", xytext=(6, 6), fontsize=8.0, color="#1a7a3a",
                        alpha=0.9, rotation=30, ha="left", va="bottom", parse_math=False)


def _discards(rows: list[dict]) -> list[tuple[int, float]]:
    """(experiment, the mean it was discarded on) per discarded experiment: the verdict's value,
    not its last trial's."""
    from autoresearch.analysis import experiments_of

    return [(e.number, e.mean) for e in experiments_of(rows)
            if e.decided and e.status == "discard" and e.mean is not None]


def _finish(fig, ax, title: str, low: float, high: float, ylabel: str = "Validation BPB (lower is better)",
            higher: bool = False):
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("Experiment #", fontsize=12)
    ax.set_ylabel(ylabel, fontsize=12)
    ax.set_title(title, fontsize=14, parse_math=False)
    ax.set_ylim(low, high)
    ax.legend(loc="lower right" if higher else "upper right", fontsize=9)  # away from where the best climbs to
    ax.grid(True, alpha=0.2)
    return fig


def save(fig, path: Path) -> Path:
    """Write the figure as a PNG whose text chunks carry its title and y axis (Title,
    Description): what the picture shows, for a reader without the image and for tests."""
    path = Path(path)
    ax = fig.axes[0]
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Glyph .* missing")  # CJK/emoji labels
            fig.savefig(path, dpi=DPI, pil_kwargs={"compress_level": 3},  # default 6: slower, barely smaller
                        metadata={"Title": ax.get_title(), "Description": ax.get_ylabel()})
    except OSError as err:
        raise AutoresearchError(f"cannot write the plot to {path}: {err.strerror or err}")
    return path


def plot_progress(rows: list[dict], summary: dict, path: Path) -> Path:
    """Draw one run's progress (rows from analysis.read_results, summary from summarize)."""
    return save(progress_figure(rows, summary), path)


def progress_figure(rows: list[dict], summary: dict):
    """plot_progress's figure, not yet written: the running best is the step line, in the run's
    direction (it climbs when higher is better)."""
    fig, ax = _figure()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Glyph .* missing")
        higher = bool(summary.get("higher_is_better"))
        _draw_run(ax, rows, summary["kept"], "#2ecc71", None, labels=True, higher_is_better=higher)
        _mark_crashes(ax, rows)
    left, right = ax.get_xlim()
    ax.set_xlim(left, right + (right - left) * 0.08)  # room for the last labels, rotated up-right
    n, k = summary["experiments"], summary.get("change_counts", summary["counts"])["keep"]
    title = f"{n} experiments, {k} changes kept" + (f"  ({summary['tag']})" if summary.get("tag") else "")
    if summary["baseline"] and summary["best"]:
        # out to the best discarded mean too: one past the best (within the noise) stays in view
        means = [summary["best"]["val_bpb"], *(mean for _, mean in _discards(rows))]
        low, high = y_range(summary["baseline"]["val_bpb"], max(means) if higher else min(means))
    elif summary["baseline"]:
        low, high = y_range(summary["baseline"]["val_bpb"], summary["baseline"]["val_bpb"])
    else:
        low, high = 0.0, 1.0  # everything crashed: an empty, honest frame
    above = sum(1 for _, mean in _discards(rows) if (mean < low if higher else mean > high))
    if above:
        plural = "experiments" if above != 1 else "experiment"
        where = "below" if higher else "above"
        ax.text(0.99, 0.97 if higher else 0.80, f"{above} {plural} worse than the baseline, {where} the axis",
                transform=ax.transAxes, fontsize=9, color="#888888", ha="right", va="top", parse_math=False)
    return _finish(fig, ax, title, low, high, metric_label(summary.get("metric"), higher), higher)


def _mark_crashes(ax, rows: list[dict]):
    """Crashes as small red ticks on the bottom edge: seen, but kept out of the y range."""
    crashes = [r["experiment"] for r in rows if r["status"] == "crash"]
    if crashes:
        ax.scatter(crashes, [0.0] * len(crashes), transform=ax.get_xaxis_transform(), marker="|",
                   c="#e74c3c", s=120, alpha=0.6, zorder=2, clip_on=False, label="Crashed")


COMPARE_COLORS = ("#2ecc71", "#3498db", "#e67e22", "#9b59b6", "#e74c3c", "#1abc9c")


def plot_compare(runs: list[tuple[list[dict], dict]], path: Path) -> Path:
    """Several runs on one axis: each run's kept points and running best in its own colour, the
    running best in each run's own direction."""
    fig, ax = _figure()
    bounds = []
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Glyph .* missing")
        for i, (rows, summary) in enumerate(runs):
            label = summary.get("tag") or Path(summary["source"]).parent.name or summary["source"]
            _draw_run(ax, rows, summary["kept"], COMPARE_COLORS[i % len(COMPARE_COLORS)], label, labels=False,
                      higher_is_better=bool(summary.get("higher_is_better")))
            if summary["baseline"]:
                best = summary["best"] or summary["baseline"]
                bounds.append(y_range(summary["baseline"]["val_bpb"], best["val_bpb"]))
    low = min((b[0] for b in bounds), default=0.0)
    high = max((b[1] for b in bounds), default=1.0)
    title = " vs ".join(f"{s.get('tag') or s['source']}: {s['experiments']} experiments, "
                        f"{s.get('change_counts', s['counts'])['keep']} changes kept" for _, s in runs)
    labels = list(dict.fromkeys(metric_label(s.get("metric"), bool(s.get("higher_is_better"))) for _, s in runs))
    # runs of different metrics: each named on the axis
    _finish(fig, ax, title, low, high, " / ".join(labels), all(s.get("higher_is_better") for _, s in runs))
    return save(fig, path)


def plot_arms(summary: dict, path: Path) -> Path:
    """An A/B (ab_report.ab_summary): each arm's running best from the shared baseline, one
    colour per arm, the baseline as a dashed line; the axis names the metric and its direction."""
    return save(arms_figure(summary), path)


def arms_figure(summary: dict):
    """plot_arms's figure, not yet written."""
    fig, ax = _figure()
    higher = bool(summary.get("higher_is_better"))
    base = summary["baseline"]["val_bpb"]
    ax.axhline(base, color="#888888", linestyle="--", linewidth=1, label=f"Shared baseline {base:.6f}")
    lows = [base]
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Glyph .* missing")
        for i, arm in enumerate(summary["arms"]):
            points = arm["running_best"]
            xs = [p["experiment"] for p in points] + [max(arm["last_experiment"], points[-1]["experiment"])]
            ys = [p["val_bpb"] for p in points] + [points[-1]["val_bpb"]]
            color = COMPARE_COLORS[i % len(COMPARE_COLORS)]
            ax.step(xs, ys, where="post", color=color, linewidth=2, alpha=0.85, zorder=3,
                    label=f"{arm['name']}: best {ys[-1]:.6f} after {arm['experiments']} experiments")
            ax.scatter(xs[1:-1], ys[1:-1], c=color, s=40, zorder=4, edgecolors="black", linewidths=0.5)
            lows.append(ys[-1])
    low, high = y_range(base, max(lows) if higher else min(lows))
    metric = summary.get("metric") or "val_bpb"
    title = f"A/B {summary['tag']}: running best {metric} per arm"
    return _finish(fig, ax, title, low, high, metric_label(metric, higher), higher)
