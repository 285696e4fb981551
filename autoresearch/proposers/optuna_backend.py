"""No LLM: an Optuna study over train.py's UPPER_CASE numeric hyperparameters (`--proposer optuna`);
for a declared target, over those of every .py edit file, minimising or maximising its metric.

The search space is the hyperparameters hparam.find_params sees for the run's profile, fixed
once, when the study is created, from the train.py of that moment (the baseline):

- `2**N` literals and ints that are powers of two >= 16 (widths, batch sizes): the exponent,
  N-1 .. N+1 (so x/2 .. 2x in powers of two).
- other ints >= 1: low = max(1, round(x/1.5)), high = max(low+1, round(1.5x)); log scale from 16 up.
  0 becomes 0 .. 2. Negative ints are not searched.
- fractions (name says RATIO, FRAC, WARMUP or DROPOUT, 0 <= x <= 1): uniform x-0.25 .. x+0.25,
  clipped to [0, 1].
- momenta and betas (name says MOMENTUM or BETA, 0 < x < 1): uniform 1-2(1-x) .. 1-(1-x)/2, the
  distance to 1 halved or doubled (0.95 -> 0.9 .. 0.975).
- other positive floats: log scale, x/4 .. 4x for learning rates (name says LR: they span
  decades), x/2 .. 2x otherwise, and a float <= 1 without LR in its name stays <= 1.
  0.0 becomes uniform 0 .. 0.1. Negative or non-finite floats are not searched.

Every trial sets all searched values at once (Optuna samples them all) as SEARCH/REPLACE blocks on
the best train.py; floats are written with 3 significant digits (the trial keeps the unrounded
value Optuna sampled; the difference is under 0.5%).

The study lives in run_dir/optuna.db (Optuna's RDB storage on SQLite, study name = the run
folder's name), so a resumed run continues it and a kill -9 loses nothing already told; without a
run_dir it is in memory. Before every ask the proposer tells the study what ctx.history says:
each trial carries the experiment number it was asked for, a final row (keep, discard: its
val_bpb; crash: TrialState.FAIL) is told once with the row's status as a user attribute, rows of
other statuses (running, ...) are left pending, and an ask whose experiment number is being
proposed again (the harness died or the proposal was rejected before a row) is told FAIL with
`abandoned` set. The train.py the study started from enters as a finished trial (the reference)
once its row is final. Rows no trial asked for (the baseline aside) are not told.

Deterministic: the sampler is rebuilt for every ask with a seed made of --seed and the number of
trials so far, so the same seed and the same history give the same proposal, resumed or not.
"""

import math
import warnings
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from autoresearch.edits import EditError, apply_file_blocks, check_syntax
from autoresearch.errors import AutoresearchError
from autoresearch.proposers.base import REGISTRY, Context, Proposal, Proposer, ProposerError, ProposerOptions
from autoresearch.proposers.hparam import Candidate, Param, edit_for, find_params, params_of_files, source_literal

SAMPLERS = ("tpe", "cmaes", "random")
FINAL = ("keep", "discard", "crash")
FRACTION = ("RATIO", "FRAC", "WARMUP", "DROPOUT")
MOMENTUM = ("MOMENTUM", "BETA")
MAX_ASKS = 5  # asks per proposal when the sampled point is the best train.py itself


# ---------------------------------------------------------------------------
# The search space
# ---------------------------------------------------------------------------


@dataclass
class Dim:
    """One searched hyperparameter. kind: float | int | pow (a `B**N` literal) | pow2 (an int
    literal that is a power of two); for pow and pow2 Optuna searches the exponent."""

    name: str
    kind: str
    low: float
    high: float
    log: bool
    start: float  # the value (exponent for pow / pow2) in the train.py the study began from
    base: int = 2
    path: str = "train.py"  # the edit file it lives in

    @property
    def key(self) -> str:
        """The parameter's name in the study: the train.py name, or log2(NAME) for an exponent."""
        return f"log{self.base}({self.name})" if self.kind in ("pow", "pow2") else self.name

    def distribution(self):
        from optuna.distributions import FloatDistribution, IntDistribution

        if self.kind == "float":
            return FloatDistribution(self.low, self.high, log=self.log)
        return IntDistribution(int(self.low), int(self.high), log=self.log)

    def written(self, x) -> tuple[str, float | int]:
        """(literal kind, value) to write for the study's value x."""
        if self.kind == "pow":
            return "pow", int(x)
        if self.kind == "pow2":
            return "int", self.base ** int(x)
        if self.kind == "int":
            return "int", int(x)
        return "float", float(f"{x:.3g}")


def search_space(params: list[Param]) -> list[Dim]:
    """The range rule of the module docstring, one Dim per searchable parameter."""
    dims = []
    for p in params:
        dim = _dim(p)
        if dim is not None:
            dims.append(dim)
    return dims


def _dim(p: Param) -> Dim | None:
    """The Dim of one parameter, in the file it lives in."""
    dim = _dim_at(p)
    return replace(dim, path=p.path) if dim is not None else None


def _dim_at(p: Param) -> Dim | None:
    x = p.value
    if p.kind == "pow":
        return Dim(p.name, "pow", max(0, x - 1), x + 1, False, x, p.base) if x >= 1 else None
    if p.kind == "int":
        if x >= 16 and x & (x - 1) == 0:
            e = x.bit_length() - 1
            return Dim(p.name, "pow2", e - 1, e + 1, False, e)
        if x == 0:
            return Dim(p.name, "int", 0, 2, False, 0)
        if x < 0:
            return None
        low = max(1, round(x / 1.5))
        return Dim(p.name, "int", low, max(low + 1, round(x * 1.5)), x >= 16, x)
    if not math.isfinite(x) or x < 0:
        return None
    if any(w in p.name for w in FRACTION) and x <= 1:
        return Dim(p.name, "float", _r(max(0.0, x - 0.25)), _r(min(1.0, x + 0.25)), False, x)
    if any(w in p.name for w in MOMENTUM) and 0 < x < 1:
        gap = 1 - x
        return Dim(p.name, "float", _r(max(0.0, 1 - 2 * gap)), _r(1 - gap / 2), False, x)
    if x == 0:
        return Dim(p.name, "float", 0.0, 0.1, False, 0.0)
    rate = "LR" in p.name.split("_")
    factor = 4.0 if rate else 2.0
    high = x * factor if rate or x > 1 else min(1.0, x * factor)
    return Dim(p.name, "float", _r(x / factor), _r(high), True, x)


def _r(x: float) -> float:
    return float(f"{x:.3g}")


# ---------------------------------------------------------------------------
# The proposer
# ---------------------------------------------------------------------------


class OptunaProposer(Proposer):
    name = "optuna"
    edits_files = False  # text in, text out: no scratch checkout needed
    can_fix = False

    def __init__(self, options: ProposerOptions):
        sampler = (options.sampler or "tpe").strip().lower()
        if sampler not in SAMPLERS:
            raise AutoresearchError(f"unknown sampler {options.sampler!r}; known samplers: {', '.join(SAMPLERS)}")
        import optuna  # imported here: ~1 s, and only this backend needs it

        optuna.logging.set_verbosity(optuna.logging.WARNING)  # no per-trial lines in the live view
        self.optuna = optuna
        self.sampler_name = sampler
        self.seed = options.seed
        self.metric = "val_bpb"  # the context's metric, set on every proposal
        if options.run_dir is not None:
            run_dir = Path(options.run_dir)
            run_dir.mkdir(parents=True, exist_ok=True)
            self.study_name = run_dir.name
            self.storage = optuna.storages.RDBStorage(
                f"sqlite:///{run_dir / 'optuna.db'}", engine_kwargs={"connect_args": {"timeout": 30}}
            )
        else:
            self.study_name = "autoresearch"
            self.storage = optuna.storages.InMemoryStorage()

    # -- one proposal ----------------------------------------------------------------------------

    def propose(self, ctx: Context) -> Proposal:
        if ctx.feedback:
            raise ProposerError("optuna cannot fix a crash: the crash is told to the study as a failed trial")
        current = {p.name: p for p in params_of_files(ctx.files, ctx.profile, "optuna")}
        self.metric = ctx.target.metric
        direction = "maximize" if ctx.target.direction == "max" else "minimize"
        study = self.optuna.create_study(storage=self.storage, study_name=self.study_name,
                                         direction=direction, load_if_exists=True)
        space = self.space(study, ctx, current)
        self.tell_history(study, space, ctx)
        dims = [d for d in space if d.name in current]
        if not dims:
            raise ProposerError("optuna: train.py has none of the study's hyperparameters left to change")
        distributions = {d.key: d.distribution() for d in dims}
        for _ in range(MAX_ASKS):
            with warnings.catch_warnings():  # multivariate TPE and with_margin are "experimental"
                warnings.simplefilter("ignore", self.optuna.exceptions.ExperimentalWarning)
                study.sampler = self.sampler(study)
                trial = study.ask(distributions)
            trial.set_user_attr("experiment", ctx.experiment)
            trial.set_user_attr("sampler", self.sampler_name)
            new, blocks, changes = self.edit(ctx.files, ctx.profile, dims, trial.params)
            if changes:
                break
            # The sampled point is the best train.py itself: it has been measured, so say so.
            best = _best_row(ctx)
            trial.set_user_attr("same_as", best["experiment"] if best else None)
            if best and best.get("status") != "crash":
                study.tell(trial, float(best.get(self.metric, best.get("val_bpb"))))
            else:
                study.tell(trial, state=self.optuna.trial.TrialState.FAIL)
        else:
            raise ProposerError(f"optuna: {MAX_ASKS} asks in a row gave back the best train.py unchanged")
        description = f"optuna {self.sampler_name} trial {trial.number}: " + ", ".join(changes)
        told = sum(t.state.is_finished() for t in study.get_trials(deepcopy=False))
        hypothesis = (f"{self.sampler_name.upper()}'s next point after {told} finished trials of study "
                      f"{self.study_name!r} ({len(changes)} of {len(dims)} hyperparameters changed) may "
                      f"{'raise' if direction == 'maximize' else 'lower'} {self.metric}.")
        return Proposal(
            hypothesis=hypothesis,
            description=description,
            files=new,
            prompt=f"optuna sampler={self.sampler_name} seed={self.seed} profile={ctx.profile} "
                   f"experiment={ctx.experiment} trial={trial.number}",
            raw="\n".join(f"{b.search}=======\n{b.replace}" for b in blocks),
        )

    def sampler(self, study):
        samplers = self.optuna.samplers
        seed = (self.seed * 1_000_003 + len(study.get_trials(deepcopy=False))) % 2**32
        if self.sampler_name == "random":
            return samplers.RandomSampler(seed=seed)
        if self.sampler_name == "cmaes":
            # The search distribution starts at the centre of the ranges, which is the baseline for
            # the log and exponent ranges (Optuna 4.9 deprecated x0). with_margin: the integer
            # dimensions do not collapse onto one value.
            return samplers.CmaEsSampler(seed=seed, with_margin=True, warn_independent_sampling=False)
        return samplers.TPESampler(seed=seed, multivariate=True)

    # -- the study's fixed search space ------------------------------------------------------------

    def space(self, study, ctx: Context, current: dict[str, Param]) -> list[Dim]:
        """The study's search space; defined (and stored in the study) by its first proposal."""
        stored = study.user_attrs.get("space")
        if stored is not None:
            return [Dim(**d) for d in stored]
        dims = search_space(list(current.values()))
        if not dims:
            raise ProposerError("optuna: train.py has no UPPER_CASE numeric hyperparameters to search")
        best = _best_row(ctx)
        # The train.py of this moment is the best so far: the last kept row's (the baseline's before any).
        study.set_user_attr("reference_experiment", int(best["experiment"]) if best else 0)
        study.set_user_attr("profile", ctx.profile)
        study.set_user_attr("space", [asdict(d) for d in dims])  # last: its presence means "defined"
        return dims

    # -- telling the study what happened -------------------------------------------------------------

    def tell_history(self, study, space: list[Dim], ctx: Context) -> None:
        TrialState = self.optuna.trial.TrialState
        final, pending = {}, set()
        for row in ctx.history:
            n = _int(row.get("experiment"))
            if n is None:
                continue
            if str(row.get("status") or "").strip().lower() in FINAL:
                final[n] = row
                pending.discard(n)
            else:
                pending.add(n)
        trials = study.get_trials(deepcopy=False)
        latest = {}
        for t in trials:  # in trial order: a redone experiment's last ask wins
            if "experiment" in t.user_attrs:
                latest[t.user_attrs["experiment"]] = t
        for t in trials:
            if t.state != TrialState.RUNNING:
                continue
            n = t.user_attrs.get("experiment")
            if n is None or latest[n] is not t:
                self._abandon(study, t, "asked again before a result" if n is not None else "no experiment recorded")
            elif n in final:
                self._tell(study, t, final[n])
            elif n >= ctx.experiment and n not in pending:
                self._abandon(study, t, f"experiment {n} is being proposed again: this ask never ran")
        ref = study.user_attrs.get("reference_experiment")
        if ref is not None and ref in final and ref not in latest:
            self._add_reference(study, space, final[ref])

    def _tell(self, study, trial, row: dict) -> None:
        TrialState = self.optuna.trial.TrialState
        self._set_attrs(study, trial, _row_attrs(row))
        value = _value(row, self.metric)
        if value is None:
            study.tell(trial.number, state=TrialState.FAIL)
        else:
            study.tell(trial.number, value)

    def _abandon(self, study, trial, why: str) -> None:
        self._set_attrs(study, trial, {"abandoned": why})
        study.tell(trial.number, state=self.optuna.trial.TrialState.FAIL)

    def _set_attrs(self, study, trial, attrs: dict) -> None:
        # a finished trial's attributes cannot change, and a RUNNING one found by get_trials has no
        # Trial object: set them through the storage (public API), then tell
        study_id = self.storage.get_study_id_from_name(study.study_name)
        trial_id = self.storage.get_trial_id_from_study_id_trial_number(study_id, trial.number)
        for key, value in attrs.items():
            self.storage.set_trial_user_attr(trial_id, key, value)

    def _add_reference(self, study, space: list[Dim], row: dict) -> None:
        optuna = self.optuna
        value = _value(row, self.metric)
        state = optuna.trial.TrialState.COMPLETE if value is not None else optuna.trial.TrialState.FAIL
        study.add_trial(optuna.trial.create_trial(
            params={d.key: (int(d.start) if d.kind != "float" else d.start) for d in space},
            distributions={d.key: d.distribution() for d in space},
            value=value,
            state=state,
            user_attrs={**_row_attrs(row), "experiment": int(row["experiment"]), "reference": True},
        ))

    # -- the edit ---------------------------------------------------------------------------------------

    def edit(self, files: dict[str, str], profile: str, dims: list[Dim], values: dict):
        """({changed edit file: new text}, the blocks, ["NAME old -> new", ...]) setting every
        dim to its value."""
        texts, blocks, changes = dict(files), [], []
        for dim in dims:
            path = dim.path if dim.path in texts else next(iter(texts))
            text = texts[path]
            p = {q.name: q for q in find_params(text, profile)}.get(dim.name)  # fresh positions each time
            if p is None:
                continue
            kind, new = dim.written(values[dim.key])
            base = dim.base if kind == "pow" else 0
            old_literal, new_literal = p.literal(), source_literal(kind, new, base)
            if old_literal == new_literal or (kind == "float" and p.kind == "float" and float(p.value) == new):
                continue
            block = edit_for(text, Candidate(replace(p, kind=kind, base=base), new, 0))
            block.path = path
            try:
                texts[path] = apply_file_blocks({path: text}, [block])[path]
            except EditError as err:  # a bug here, not in a model: say so plainly
                raise ProposerError(f"optuna: generated edit does not apply: {err}") from None
            blocks.append(block)
            changes.append(f"{dim.name} {old_literal} -> {new_literal}")
        changed = {path: text for path, text in texts.items() if text != files[path]}
        for path, text in changed.items():
            try:
                check_syntax(text, path)
            except EditError as err:
                raise ProposerError(f"optuna: generated edit breaks {path}: {err}") from None
        return changed, blocks, changes


def _int(value) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _value(row: dict, metric: str = "val_bpb") -> float | None:
    """The row's metric to tell, or None for a failed trial (a crash, or no usable number)."""
    if str(row.get("status") or "").strip().lower() == "crash":
        return None
    try:
        value = float(row.get(metric, row.get("val_bpb")))
    except (TypeError, ValueError):
        return None
    # val_bpb is positive (0 marks a crash in results.tsv); a declared metric may be any number
    return value if math.isfinite(value) and (value > 0 or metric != "val_bpb") else None


def _row_attrs(row: dict) -> dict:
    attrs = {"status": str(row.get("status") or "").strip().lower()}
    for key in ("trials", "reason", "commit"):
        if row.get(key) not in (None, ""):
            attrs[key] = row[key] if isinstance(row[key], (int, float)) else str(row[key])
    return attrs


def _best_row(ctx: Context) -> dict | None:
    """The history entry of the best so far, as the Ledger named it in the context (a context
    built by hand without it: the last kept entry, the same definition)."""
    history = ctx.history
    if ctx.best and ctx.best.get("experiment") is not None:
        return next((r for r in history if _int(r.get("experiment")) == ctx.best["experiment"]), None)
    kept = [r for r in history if str(r.get("status") or "").strip().lower() == "keep" and _int(r.get("experiment")) is not None]
    return kept[-1] if kept else None


REGISTRY["optuna"] = OptunaProposer
