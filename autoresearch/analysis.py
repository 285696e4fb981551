"""What happened in a run: read results.tsv (ours or upstream's five columns) and run.json, and
compute the figures `autoresearch report` and `autoresearch status` show. Pure: reads files,
writes nothing, prints nothing.

    table = read_results(Path("results/mar5/results.tsv"))   # -> Table (rows + malformed lines)
    summary = summarize(table, run=read_run(Path("results/mar5")))   # -> dict, see report.py

Columns are looked up by header name, so upstream's `commit val_bpb memory_gb status
description` and our 20-column files (docs/architecture.md) read the same way; extra columns are
optional and absent ones give None.
"""

import json
import math
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from types import SimpleNamespace

from autoresearch.errors import AutoresearchError
from autoresearch.keep_rule import MIN_DELTA, Levels, judge, pooled_noise
from autoresearch.ledger import best_of, group, noise_of
from autoresearch.records import DECIDING, PARSERS, UPSTREAM_COLUMNS, RunState, metric_of
from autoresearch.records import STATUSES as ROW_STATUSES

STATUSES = DECIDING  # an experiment's verdicts; `trial` rows are measurements that decided nothing
# CUDA run-to-run jitter of val_bpb is a few x 1e-4 (upstream PR #560): smaller wins are suspect
NOISE_BPB = 3e-4



@dataclass
class Table:
    """The readable rows of one results.tsv, and the lines that were not."""

    path: Path
    columns: list[str]
    rows: list[dict] = field(default_factory=list)  # typed values, see _parse_row
    malformed: list[tuple[int, str]] = field(default_factory=list)  # (line number, problem)
    torn_line: int | None = None  # a bad last line with no newline: a write cut short, skipped
    metric: str = "val_bpb"  # a declared target's metric names the second column; read as val_bpb


# ---------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------


def read_results(path: Path) -> Table:
    """Parse a results.tsv. Bad rows become `malformed` entries (1-based line numbers); a file
    that is missing, empty or lacks upstream's five columns in its header is an error."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig", errors="replace")  # tolerate a BOM
    except FileNotFoundError:
        raise AutoresearchError(f"no results file at {path}")
    except OSError as err:
        raise AutoresearchError(f"cannot read {path}: {err.strerror or err}")
    lines = text.splitlines()
    if not text.strip():
        raise AutoresearchError(f"{path} is empty (expected a header line: {' '.join(UPSTREAM_COLUMNS)})")
    columns = [c.strip().lower() for c in lines[0].split("\t")]
    metric = metric_of([c.strip() for c in lines[0].split("\t")])
    if metric != "val_bpb":
        columns[1] = "val_bpb"
    missing = [c for c in UPSTREAM_COLUMNS if c not in columns]
    if missing:
        raise AutoresearchError(
            f"{path} line 1 is not a results.tsv header: missing column(s) {', '.join(missing)} "
            f"(expected tab-separated {' '.join(UPSTREAM_COLUMNS)} ...)"
        )
    table = Table(path=path, columns=columns, metric=metric)
    for number, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) != len(columns):
            row, problem = {}, f"expected {len(columns)} fields, found {len(fields)}"
        else:
            row, problem = _parse_row(dict(zip(columns, fields)), metric == "val_bpb")
        if problem and number == len(lines) and not text.endswith(("\n", "\r")):
            table.torn_line = number  # the writer was killed mid-line; it cuts this off itself
        elif problem:
            table.malformed.append((number, problem))
        else:
            row["line"] = number
            table.rows.append(row)
    for position, row in enumerate(table.rows):
        if row.get("experiment") is None:
            row["experiment"] = position  # upstream's notebook numbers rows by position
    return table


def _parse_row(raw: dict, lab: bool = True) -> tuple[dict, str | None]:
    row = {key: value.strip() for key, value in raw.items()}
    status = row["status"].lower()
    if status not in ROW_STATUSES:
        return row, f"status {row['status']!r} is not keep, discard, crash or trial"
    row["status"] = status
    val = _number(row["val_bpb"])
    if status != "crash" and (val is None or not math.isfinite(val) or (lab and val <= 0)):
        return row, f"val_bpb {row['val_bpb']!r} is not a positive number" if lab else f"{row['val_bpb']!r} is not a number"
    row["val_bpb"] = val if status != "crash" else None  # crashes log 0.000000
    for name, text in list(row.items()):  # the writer's own parsers (results.SCHEMA), leniently
        if name in PARSERS and name not in ("val_bpb", "status", "started_at"):
            try:
                value = PARSERS[name](text)
            except ValueError:
                value = None
            row[name] = None if isinstance(value, float) and not math.isfinite(value) else value
    if "started_at" in row:
        row["started_at"] = parse_time(row["started_at"])
    return row, None


def _number(text: str) -> float | None:
    try:
        return float(text)
    except (TypeError, ValueError):
        return None


def parse_time(text) -> datetime | None:
    """ISO 8601 (`2026-11-22T07:30:00Z`) to an aware UTC datetime; None when unreadable."""
    if not isinstance(text, str) or not text.strip():
        return None
    try:
        moment = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)


def read_run(folder: Path) -> dict | None:
    """run.json of a results/<tag>/ folder, with `state` made effective: a `running` state whose
    pid is dead reads as `stopped`. None when there is no (readable) run.json."""
    try:
        run = json.loads((Path(folder) / "run.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(run, dict):
        return None
    run["recorded_state"] = run.get("state")
    run["state"] = RunState.effective_state(run) or None
    return run


# ---------------------------------------------------------------------------
# Finding runs
# ---------------------------------------------------------------------------


def find_root(start: Path) -> Path:
    """The nearest folder at or above `start` holding train.py (or a declared target's
    autoresearch.toml) and a results/ folder."""
    start = Path(start).resolve()
    for folder in [start, *start.parents]:
        if ((folder / "train.py").is_file() or (folder / "autoresearch.toml").is_file()) and (folder / "results").is_dir():
            return folder
    raise AutoresearchError(
        f"no folder with train.py and results/ in {start} or above; "
        "run this inside an autoresearch checkout, or pass --root or --results"
    )


def run_folders(root: Path) -> list[Path]:
    """results/<tag>/ folders that hold a results.tsv or a run.json, newest activity first."""
    results = Path(root) / "results"
    if not results.is_dir():
        return []
    folders = [f for f in results.iterdir()
               if f.is_dir() and ((f / "results.tsv").is_file() or (f / "run.json").is_file())]
    return sorted(folders, key=last_activity, reverse=True)


def last_activity(folder: Path) -> float:
    """Newest modification time (epoch seconds) of a run folder's results.tsv or run.json."""
    times = [(folder / name).stat().st_mtime for name in ("results.tsv", "run.json")
             if (folder / name).is_file()]
    return max(times, default=0.0)


def tag_folder(root: Path, tag: str | None) -> Path:
    """results/<tag>/ of `root`; without a tag, the most recently active run."""
    folders = run_folders(root)
    if tag is None:
        if not folders:
            raise AutoresearchError(f"no runs under {Path(root) / 'results'} yet; start one with `autoresearch run`")
        return folders[0]
    folder = Path(root) / "results" / tag
    if folder not in folders:
        known = ", ".join(sorted(f.name for f in folders)) or "none"
        raise AutoresearchError(f"unknown tag {tag!r} (runs under {Path(root) / 'results'}: {known})")
    return folder


# ---------------------------------------------------------------------------
# Figures
# ---------------------------------------------------------------------------


def experiments_of(rows: list[dict]):
    """The rows grouped into experiments by the Ledger's own grouping (ledger.group)."""
    return group(SimpleNamespace(**r) for r in rows)


def summarize(table: Table, run: dict | None = None, tag: str | None = None,
              noise: float = NOISE_BPB) -> dict:
    """Every figure of the report, as plain JSON-ready values (schema: docs/report.md). Counts
    are of experiments (each decided by its last row); trials are rows."""
    rows = table.rows
    experiments = experiments_of(rows)
    decided = [e for e in experiments if e.decided]
    counts = Counter(e.status for e in decided)
    valid = [e for e in experiments if e.values]
    baseline = _experiment_brief(valid[0]) if valid else None
    baselines = baseline_numbers(experiments)
    changes = Counter(e.status for e in decided if e.number not in baselines)
    sign = gain_sign(run)
    if table.metric != "val_bpb":  # the lab's CUDA noise floor means nothing in another metric's units
        noise = float((run or {}).get("min_delta") or 0.0)
    kept = kept_with_deltas(experiments, baseline, noise, sign)
    best = best_of(experiments)
    best_brief = next((k for k in kept if k["experiment"] == best.experiment), None)
    improvement = round(sign * (baseline["val_bpb"] - best.mean), 9) if best.mean is not None and baseline else None
    hits = sorted((k for k in kept if k["delta"] is not None), key=lambda k: -k["delta"])
    n_decided = changes["keep"] + changes["discard"]
    return {
        "source": str(table.path.resolve()),
        "tag": tag,
        "format": "autoresearch" if len(table.columns) > len(UPSTREAM_COLUMNS) else "upstream",
        "metric": table.metric,
        "higher_is_better": sign < 0,
        "state": run.get("state") if run else None,
        "run": _run_info(run),
        "experiments": len(experiments),
        "trials": len(rows),
        "counts": {s: counts[s] for s in STATUSES},
        "changes": sum(1 for e in experiments if e.number not in baselines),
        "change_counts": {s: changes[s] for s in STATUSES},
        "keep_rate": changes["keep"] / n_decided if n_decided else None,
        "baseline": baseline,
        "best": best_brief,
        "improvement": improvement,
        "improvement_pct": round(100 * improvement / baseline["val_bpb"], 6) if improvement is not None else None,
        "noise_threshold": noise,
        "noise": {**noise_summary(experiments, rows), "confirms": extra_trial_effect(experiments, run)},
        "improvements": len(hits),
        "within_noise": sum(1 for k in hits if k["within_noise"]),
        "kept": kept,
        "heldout": heldout_check(kept, noise_of(experiments).sigma),
        "top_hits": hits,
        "timing": timing(rows, run, len(experiments), device_of(table.path.parent, experiments)),
        "speculation": speculation(experiments, table.path.parent, run),
        "crash_reasons": crash_reasons(rows, table.columns),
        "usage": usage(rows, len(hits)),
        "by_proposer": by_proposer(experiments, kept) if "proposer" in table.columns else [],
        "malformed": [{"line": n, "problem": p} for n, p in table.malformed],
        "torn_line": table.torn_line,
        "plot": None,
    }


def higher_is_better(run: dict | None) -> bool:
    """A run's direction, as its run.json records it: a declared target's `direction = "max"`;
    the lab (no direction) is lower-is-better. The one place the report, the plots and the A/B
    learn it."""
    return (run or {}).get("direction") == "max"


def gain_sign(run: dict | None) -> float:
    """The sign that makes a gain positive when it is better: gain = sign * (reference - value)."""
    return -1.0 if higher_is_better(run) else 1.0


def better(value: float, than: float | None, higher: bool) -> bool:
    """`value` beats `than` in the run's direction (anything beats None)."""
    return than is None or (value > than if higher else value < than)


def baseline_numbers(experiments) -> set[int]:
    """The experiments that measured the unmodified train.py (role or proposer `baseline`); in a
    file that names neither (upstream's five columns), its first experiment, by convention."""
    named = {e.number for e in experiments
             if "baseline" in (getattr(e.first, "role", None), getattr(e.first, "proposer", None))}
    if named or not experiments:
        return named
    if any(getattr(e.first, "role", None) or getattr(e.first, "proposer", None) for e in experiments):
        return set()
    return {experiments[0].number}


def kept_changes(experiments) -> int:
    """Kept experiments that changed train.py: the baseline's keep is no change."""
    baselines = baseline_numbers(experiments)
    return sum(1 for e in experiments if e.decided and e.status == "keep" and e.number not in baselines)


def device_of(folder: Path, experiments) -> str | None:
    """The device the first measured trial trained on (`device:` in its run.log's summary, e.g.
    `cpu` or `cuda:NVIDIA H100 80GB HBM3`); None when no log says."""
    from autoresearch.summary import parse_summary

    for exp in experiments[:3]:
        if not exp.values:
            continue
        try:
            text = (Path(folder) / "runs" / f"{int(exp.number):04d}" / "run.log").read_text(errors="replace")
        except (OSError, ValueError):
            continue
        device = parse_summary(text).get("device")
        if device:
            return str(device)
    return None


SPECULATION = ("fresh", "used", "rebased", "discarded-asked-again", "failed-asked-again")


def speculation(experiments, folder: Path, run: dict | None) -> dict:
    """Ideas prepared while the previous experiment trained (the `speculation` column of each
    experiment's first trial): used as asked, rebased onto a newer best, thrown away (overlapped
    the new best; asked again) or failed; `fresh` experiments were asked for after the training.
    The thrown-away ideas' cost is read from their proposal.json (`discarded`.usage); it is part
    of run.json's proposal_cost_usd, which also holds failed proposals."""
    counts = Counter(getattr(e.first, "speculation", None) or "" for e in experiments)
    discarded = [e for e in experiments if (getattr(e.first, "speculation", None) or "").startswith("discarded")]
    cost = 0.0
    for exp in discarded:
        try:
            record = json.loads((Path(folder) / "runs" / f"{int(exp.number):04d}" / "proposal.json").read_text())
            cost += float(((record.get("discarded") or {}).get("usage") or {}).get("cost_usd") or 0.0)
        except (OSError, ValueError, TypeError, AttributeError):
            continue
    prepared = sum(counts[k] for k in SPECULATION[1:])
    return {
        "prepared": prepared,
        "used": counts["used"],
        "rebased": counts["rebased"],
        "discarded": counts["discarded-asked-again"],
        "failed": counts["failed-asked-again"],
        "fresh": counts["fresh"],
        "discarded_cost_usd": round(cost, 9),
        "proposal_cost_usd": float((run or {}).get("proposal_cost_usd") or 0.0),
    }


def noise_summary(experiments, rows: list[dict]) -> dict:
    """The pooled run-to-run sigma (the Ledger's estimate) and what the repeats cost."""
    noise = noise_of(experiments)
    extra = [r for exp in experiments for r in exp.rows[1:]]
    # the lab's summary says how long it trained; a declared target's command: its whole run
    seconds = [v for r in extra if (v := getattr(r, "training_seconds", None) or getattr(r, "run_seconds", None))]
    total = [v for r in rows if (v := r.get("training_seconds") or r.get("run_seconds"))]
    return {
        "sigma": noise.sigma,
        "dof": noise.dof,
        "extra_trials": len(extra),
        "extra_training_seconds": sum(seconds) if seconds else 0.0,
        "extra_share": sum(seconds) / sum(total) if seconds and total else 0.0,
    }


def extra_trial_effect(experiments, run: dict | None = None) -> dict:
    """What the keep rule's extra trials of candidates (the `confirm` rows) cost and changed.

    cost: their number and training time (run_seconds, the whole run; else training_seconds).
    changed: decided candidates with more than one trial whose final verdict differs from the
    call the rule would have made on the first trial alone (the same test, capped at one trial,
    against the trials of the commit it was built on, with the noise known before it)."""
    confirms = [r for exp in experiments for r in exp.rows if getattr(r, "role", None) == "confirm"]
    seconds = sum((getattr(r, "run_seconds", None) or getattr(r, "training_seconds", None) or 0.0) for r in confirms)
    values_of = {exp.commit: exp.values for exp in experiments if exp.decided and exp.status == "keep"}
    rule = (run or {}).get("keep_rule") or "noise"  # run.json's; a confirm row means the noise rule
    min_delta = (run or {}).get("min_delta")
    min_delta = MIN_DELTA if min_delta is None else float(min_delta)
    changed, confirmed = [], 0
    for i, exp in enumerate(experiments):
        first = exp.first
        base = values_of.get(getattr(first, "parent", None))
        if not exp.decided or exp.status == "crash" or getattr(first, "role", None) == "baseline" or len(exp.values) < 2 or not base:
            continue
        confirmed += 1
        noise = pooled_noise([e.values for e in experiments[:i]] + [exp.values[:1]])
        alone = judge(rule, exp.values[:1], base, noise, min_delta, levels=Levels(max_trials=1),
                      direction="max" if higher_is_better(run) else "min").decision
        alone = "keep" if alone == "confirm" else alone  # (noise not yet measured: a gain is a keep)
        if alone != exp.status:
            changed.append({"experiment": exp.number, "first_trial_alone": alone, "final": exp.status,
                            "trials": len(exp.values)})
    return {"confirm_trials": len(confirms), "confirm_seconds": round(seconds, 1),
            "confirmed_experiments": confirmed, "changed": changed}


def kept_with_deltas(experiments, baseline: dict | None, noise: float, sign: float = 1.0) -> list[dict]:
    """Kept experiments in order; each one's delta is the previous kept mean minus its own (the
    first kept one is measured against the baseline, so the baseline itself has none), with its
    evidence: trials, spread, and the gain in units of the pooled sigma."""
    sigma = noise_of(experiments).sigma
    kept, previous = [], None
    for exp in experiments:
        if not exp.decided or exp.status != "keep":
            continue
        entry = _experiment_brief(exp)
        is_baseline = baseline is not None and exp.number == baseline["experiment"]
        reference = previous if previous is not None else (None if is_baseline or baseline is None else baseline["val_bpb"])
        # val_bpb is logged to 6 decimals: round so 0.9903 - 0.99 is 3e-4, not 2.9999e-4
        delta = round(sign * (reference - entry["val_bpb"]), 9) if reference is not None else None
        entry["delta"] = delta
        entry["within_noise"] = delta is not None and delta < noise
        entry["margin_sigma"] = round(delta / sigma, 2) if delta is not None and sigma else None
        kept.append(entry)
        previous = entry["val_bpb"]
    return kept


def _experiment_brief(exp) -> dict:
    """An experiment as the report shows it: its deciding row, val_bpb its mean over trials."""
    entry = _brief(vars(exp.last))
    values = exp.values
    entry["val_bpb"] = round(sum(values) / len(values), 9) if values else None
    entry["trials"] = len(exp.rows)
    entry["spread"] = round((max(values) - min(values)) / 2, 9) if len(values) > 1 else None
    return entry


def _brief(row: dict | None) -> dict | None:
    if row is None:
        return None
    return {key: row.get(key) for key in (
        "experiment", "commit", "val_bpb", "memory_gb", "description", "proposer", "model",
        "audit", "audit_val_bpb", "heldout_bpb", "metrics")}


OVERFIT_FLOOR = 1e-3
"""The smallest held-out shortfall (bits per byte) flagged when the noise is not known.

A kept step is flagged as fitting the validation set when held-out improved by less than val
did, short by more than max(half the val gain, 2 sigma, OVERFIT_FLOOR). Both numbers come from
the same audited model and the splits are random document samples of one corpus, so an honest
change moves them alike: a shortfall beyond half the gain and beyond the run-to-run noise (sigma,
the pooled val_bpb spread; the gap between the splits varies less, as both read one model) is not
sampling. Held-out getting worse while val improved is the plainest case of it."""


def heldout_check(kept: list[dict], sigma: float | None) -> dict:
    """Val and held-out side by side along the kept chain, each step judged as above."""
    chain = [k for k in kept if k.get("heldout_bpb") is not None and k.get("audit_val_bpb") is not None]
    threshold_floor = max(2 * sigma if sigma else 0.0, OVERFIT_FLOOR)
    steps, previous = [], None
    for k in chain:
        step = {"experiment": k["experiment"], "commit": k["commit"], "val_bpb": k["audit_val_bpb"],
                "heldout_bpb": k["heldout_bpb"], "val_gain": None, "heldout_gain": None, "diverges": False}
        if previous is not None:
            val_gain = round(previous["val_bpb"] - step["val_bpb"], 9)
            heldout_gain = round(previous["heldout_bpb"] - step["heldout_bpb"], 9)
            step["val_gain"], step["heldout_gain"] = val_gain, heldout_gain
            step["diverges"] = val_gain > 0 and val_gain - heldout_gain > max(val_gain / 2, threshold_floor)
        steps.append(step)
        previous = step
    return {"steps": steps, "diverges": any(s["diverges"] for s in steps),
            "threshold": threshold_floor, "audited_keeps": len(chain)}


def _run_info(run: dict | None) -> dict | None:
    if run is None:
        return None
    keys = ("recorded_state", "pid", "branch", "base_commit", "started_at", "updated_at",
            "proposer", "model", "max_experiments", "failed_proposals", "proposal_cost_usd")
    return {key: run.get(key) for key in keys}


def timing(rows: list[dict], run: dict | None, experiments: int | None = None,
           device: str | None = None) -> dict:
    """Elapsed hours (first start to last finish, else run.json's span), experiments per hour,
    mean wall and training seconds per experiment."""
    walls = [r["wall_seconds"] for r in rows if r.get("wall_seconds") is not None]
    trains = [r["training_seconds"] for r in rows if r.get("training_seconds") is not None]
    starts = [r["started_at"] for r in rows if r.get("started_at") is not None]
    elapsed = None
    if starts:
        ends = [r["started_at"].timestamp() + (r.get("wall_seconds") or 0.0)
                for r in rows if r.get("started_at") is not None]
        elapsed = max(ends) - min(s.timestamp() for s in starts)
    elif run and parse_time(run.get("started_at")) and parse_time(run.get("updated_at")):
        elapsed = (parse_time(run["updated_at"]) - parse_time(run["started_at"])).total_seconds()
    elif walls and len(walls) == len(rows):
        elapsed = sum(walls)
    hours = elapsed / 3600 if elapsed and elapsed > 0 else None
    # Schema 3: the training process's own wall time and the GPU's idle gap before it, per trial.
    timed = [r for r in rows if r.get("run_seconds") is not None and r.get("gpu_idle_seconds") is not None]
    busy, idle = sum(r["run_seconds"] for r in timed), sum(r["gpu_idle_seconds"] for r in timed)
    return {
        "device": device,
        "gpu_training_share": busy / (busy + idle) if timed and busy + idle > 0 else None,
        "gpu_idle_seconds": idle if timed else None,
        "busy_seconds": busy if timed else None,
        "workers": int((run or {}).get("workers") or 1),
        "elapsed_hours": hours,
        "experiments_per_hour": (len(rows) if experiments is None else experiments) / hours if hours else None,
        "mean_wall_seconds": sum(walls) / len(walls) if walls else None,
        "mean_training_seconds": sum(trains) / len(trains) if trains else None,
        "first_started_at": min(starts).strftime("%Y-%m-%dT%H:%M:%SZ") if starts else None,
    }


def crash_reasons(rows: list[dict], columns: list[str]) -> list[dict]:
    """Crash counts per reason, most frequent first ("unknown" where no reason was logged)."""
    if "reason" not in columns:
        reasons = Counter("unknown" for r in rows if r["status"] == "crash")
    else:
        reasons = Counter(r.get("reason") or "unknown" for r in rows if r["status"] == "crash")
    return [{"reason": reason, "count": n} for reason, n in reasons.most_common()]


def usage(rows: list[dict], improvements: int) -> dict:
    """LLM tokens and cost in total and per kept improvement (None without those columns)."""
    def total(name):
        values = [r[name] for r in rows if r.get(name) is not None]
        return sum(values) if values else None

    cost, tokens_in, tokens_out = total("cost_usd"), total("input_tokens"), total("output_tokens")
    tokens = (tokens_in or 0) + (tokens_out or 0) if tokens_in is not None or tokens_out is not None else None
    return {
        "input_tokens": tokens_in,
        "output_tokens": tokens_out,
        "cost_usd": cost,
        "cost_per_improvement_usd": cost / improvements if cost is not None and improvements else None,
        "tokens_per_improvement": tokens / improvements if tokens is not None and improvements else None,
    }


def by_proposer(experiments, kept: list[dict]) -> list[dict]:
    """One entry per (proposer, model): outcomes, keep rate, the val_bpb it won, cost."""
    groups: dict[tuple, dict] = {}
    for exp in experiments:
        first = vars(exp.first)
        key = (first.get("proposer") or "", first.get("model") or "")
        group_ = groups.setdefault(key, {
            "proposer": key[0], "model": key[1], "experiments": 0, "keep": 0, "discard": 0,
            "crash": 0, "keep_rate": None, "improvement": 0.0, "input_tokens": 0,
            "output_tokens": 0, "cost_usd": 0.0})
        group_["experiments"] += 1
        if exp.decided:
            group_[exp.status] += 1
        for r in exp.rows:
            row = vars(r)
            group_["input_tokens"] += row.get("input_tokens") or 0
            group_["output_tokens"] += row.get("output_tokens") or 0
            group_["cost_usd"] += row.get("cost_usd") or 0.0
    for entry in kept:
        key = (entry["proposer"] or "", entry["model"] or "")
        if entry["delta"] is not None and key in groups:
            groups[key]["improvement"] += entry["delta"]
    for group_ in groups.values():
        n_decided = group_["keep"] + group_["discard"]
        changes = group_["proposer"] != "baseline"  # the baseline's keep is no kept change
        group_["keep_rate"] = group_["keep"] / n_decided if n_decided and changes else None
        group_["improvement"] = round(group_["improvement"], 9)
        group_["cost_usd"] = round(group_["cost_usd"], 9)
    return list(groups.values())


def status_line(folder: Path) -> dict:
    """One line of `autoresearch status` for a results/<tag>/ folder; bad rows are skipped."""
    run = read_run(folder)
    table = None
    if (folder / "results.tsv").is_file():
        try:
            table = read_results(folder / "results.tsv")
        except AutoresearchError:
            table = None
    rows = table.rows if table else []
    experiments = experiments_of(rows)
    best = best_of(experiments)
    activity = last_activity(folder)
    updated = parse_time((run or {}).get("updated_at"))
    if updated is not None:
        activity = max(activity, updated.timestamp())
    return {
        "tag": folder.name,
        "state": (run or {}).get("state") or "unknown",
        "experiments": len(experiments),
        "kept": kept_changes(experiments),
        "best_val_bpb": best.mean,
        "metric": table.metric if table else (run or {}).get("metric") or "val_bpb",
        "higher_is_better": higher_is_better(run),
        "last_activity": datetime.fromtimestamp(activity, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        if activity else None,
        "proposer": (run or {}).get("proposer") or ",".join(sorted(
            {r["proposer"] for r in rows if r.get("proposer") and r["proposer"] != "baseline"})) or None,
        "model": (run or {}).get("model") or None,
        "malformed": len(table.malformed) if table else 0,
        "torn_line": table.torn_line if table else None,
    }
