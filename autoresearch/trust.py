"""Trusting the number, as the loop uses it: sandbox, held-out watch, cache guard, audit.

    trust = Trust.open(config, prepare_py, env, note)   # once per run (loop.Run.start)
    argv = trust.command(argv, worktree, run_dir)       # training inside bubblewrap, when on
    trust.before_run(model_path)                        # no stale model; the held-out watch on
    reasons, stop = trust.after_run()                   # held-out reads, cache changes (quick)
    audited = trust.audit_keep(model_path, printed, env)  # a row about to be kept

A declared target (autoresearch.toml) has its own `audit` command instead: run on every keep in a
fresh folder holding the run's base commit's fixed files and the kept candidate's edit files,
sandboxed like a training (`audit_command`).

The lab's own answers come from the run's base commit: its prepare.py (the text the audit runs)
says where the cache and the held-out split are. A lab whose prepare.py has no `evaluate_handoff`
(the stand-in labs of the tests, an old fork) cannot be audited: `--audit on` refuses it at the
start, `--audit off` runs without the audit and every row says `audit=off`.
"""

import json
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Mapping

from autoresearch.audit import AUDIT_TOLERANCE, CAUSAL_TOLERANCE, AuditResult, audit_model, matches
from autoresearch.cache_guard import CacheGuard
from autoresearch.errors import AutoresearchError
from autoresearch.heldout_watch import HeldoutWatch
from autoresearch.sandbox import Sandbox

AUDIT_CHOICES = ("on", "off")  # --audit
SANDBOX_CHOICES = ("on", "off", "auto")  # --sandbox
HANDOFF_ENV = "AUTORESEARCH_HANDOFF"  # prepare.HANDOFF_ENV: where train.py's handoff_model saves

_PROBE = """\
import json, sys
sys.path.insert(0, sys.argv[1])
import prepare
root = prepare.CACHE_DIR / prepare.SOURCE
print("LAB " + json.dumps({"cache": str(prepare.CACHE_DIR), "source": str(root),
                           "manifest": str(root / prepare.MANIFEST_FILENAME)}))
"""


@dataclass
class LabPaths:
    cache: Path  # AUTORESEARCH_CACHE as prepare.py resolves it
    source: Path  # <cache>/<source>/
    manifest: Path  # <source>/manifest.json


@dataclass
class Audited:
    """A kept row's audit: passed, or why not (one line for the row's reason)."""

    result: AuditResult
    ok: bool
    reason: str = ""
    value: float | None = None  # a declared audit's printed metric: recorded (audit_val_bpb), never decided on


def supports_audit(prepare_py: str) -> bool:
    """A prepare.py with the handoff evaluation and the cache manifest (a lab that can be audited)."""
    return "def evaluate_handoff(" in prepare_py and "MANIFEST_FILENAME" in prepare_py


def probe_lab(prepare_py: str, env: Mapping[str, str], timeout: float = 120.0) -> LabPaths:
    """Ask the base commit's prepare.py, in a fresh process with the lab's environment, where
    its cache is (the same resolution train.py and the audit get)."""
    with tempfile.TemporaryDirectory(prefix="autoresearch-probe-") as folder:
        (Path(folder) / "prepare.py").write_text(prepare_py)
        (Path(folder) / "probe.py").write_text(_PROBE)
        env = {k: v for k, v in env.items() if k != HANDOFF_ENV}
        env["PYTHONDONTWRITEBYTECODE"] = "1"
        done = subprocess.run([sys.executable, "-E", str(Path(folder) / "probe.py"), folder], cwd=folder,
                              env=env, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    lines = [line for line in done.stdout.splitlines() if line.startswith("LAB ")]
    if done.returncode != 0 or not lines:
        last = (done.stderr.strip().splitlines() or [f"exit {done.returncode}"])[-1]
        raise AutoresearchError(f"cannot read the lab's settings from prepare.py: {last[:200]}")
    found = json.loads(lines[-1][4:])
    return LabPaths(Path(found["cache"]), Path(found["source"]), Path(found["manifest"]))


class Trust:
    """What one session does around every training run and every keep."""

    def __init__(self, audit: bool, sandbox: Sandbox | None, lab: LabPaths | None, guard: CacheGuard | None,
                 prepare_py: str, scratch: Path):
        self.audit, self.sandbox, self.lab, self.guard = audit, sandbox, lab, guard
        self.prepare_py, self.scratch = prepare_py, Path(scratch)
        self.watch: HeldoutWatch | None = None
        self.declared = False  # a declared target's: its audit is its `audit` command, if any
        self.target = None  # that target (target.Target)
        self.audit_root: Path | None = None  # where that target's audit runs (open_declared)

    @classmethod
    def open(cls, audit: str, sandbox: str, prepare_py: str, env: Mapping[str, str], scratch: Path,
             note: Callable[[str], None]) -> "Trust":
        """Decide the audit, the sandbox and the guard for this session; warn in one line each."""
        capable = supports_audit(prepare_py)
        if audit == "on" and not capable:
            raise AutoresearchError(
                "--audit on needs a prepare.py with evaluate_handoff and a cache manifest (this lab's "
                "base commit has none); update the lab, or pass --audit off (rows then say audit=off)")
        lab = guard = None
        if capable:
            lab = probe_lab(prepare_py, env)
            guard = CacheGuard(lab.manifest)  # no manifest: a one-line "re-run prepare" error
            stale = guard.full_changes()
            if stale:
                raise AutoresearchError(f"the cache does not match its manifest ({stale[0]}); {rebuild_hint(lab)}")
        box = choose_sandbox(sandbox, note, "training runs unsandboxed ({}); held-out reads are only detected")
        if sandbox == "off":
            note("warning: --sandbox off: training runs as you, unsandboxed; held-out reads are only detected")
        if audit == "off":
            note("warning: --audit off: kept rows are not re-evaluated (every row says audit=off)")
        return cls(audit == "on", box, lab, guard, prepare_py, scratch)

    @classmethod
    def open_declared(cls, sandbox: str, scratch: Path, note: Callable[[str], None], target,
                      audit: str = "on", audit_root: Path | None = None) -> "Trust":
        """A declared target's: the sandbox as --sandbox says, no cache guard (the lab's), and
        its `audit` command on every keep when it declares one (`--audit off` skips it). The
        sandbox always cuts the network, so `network = true` runs unsandboxed (refused with
        --sandbox on)."""
        network = target.network
        if network and sandbox == "on":
            raise AutoresearchError("network = true in autoresearch.toml, but the sandbox cuts the network; "
                                    "pass --sandbox off (or auto) or set network = false")
        if network:
            note("warning: network = true: the experiment runs unsandboxed, with the network")
        box = choose_sandbox("off" if network else sandbox, note, "the experiment runs unsandboxed ({})")
        if target.audit and audit == "off":
            note("warning: --audit off: the target's audit command is not run (every row says audit=off)")
        trust = cls(bool(target.audit) and audit != "off", box, None, None, "", scratch)
        trust.declared, trust.target = True, target
        # The audit runs as a worker of the run would (so a killed run's is reaped at the next
        # start), outside `scratch`, which sandboxed trainings may write to.
        trust.audit_root = Path(audit_root) if audit_root is not None else Path(scratch) / "audit"
        return trust

    def heldout_paths(self) -> list[Path]:
        return self.guard.heldout_paths() if self.guard is not None else []

    def command(self, argv: list[str], worktree: Path, run_dir: Path) -> list[str]:
        if self.sandbox is None:
            return argv
        cache = self.lab.cache if self.lab is not None and self.lab.cache.exists() else worktree
        return self.sandbox.wrap(argv, worktree=worktree, run_dir=run_dir, cache_dir=cache,
                                 heldout_paths=self.heldout_paths(), scratch=self.scratch)

    def before_run(self, model_path: Path | None) -> None:
        if model_path is not None:
            Path(model_path).unlink(missing_ok=True)  # a model left from before is not this run's
        if self.sandbox is None and self.heldout_paths():
            self.watch = HeldoutWatch(self.heldout_paths())
            self.watch.start()

    def after_run(self) -> tuple[list[str], bool]:
        """(reasons the run is a crash, whether the cache changed: the run must stop)."""
        reasons = self.watch.stop() if self.watch is not None else []
        self.watch = None
        changes = self.cache_changes(full=False)
        return reasons + changes, bool(changes)

    def mark(self, row, audited: Audited | None, watched: bool, remote: bool) -> None:
        """A row's trust columns: how its training was isolated, and its audit."""
        if self.sandbox is not None and not remote:
            row.sandbox = "bwrap"
        else:  # on Ray, or several unsandboxed workers: a held-out read could not be attributed
            row.sandbox = "watch" if watched else "none"
        if self.declared and not self.target.audit:
            row.audit = "none"
        elif not self.audit:
            row.audit = "off"
        elif audited is not None:
            row.audit = "pass" if audited.ok else "fail"
            row.audit_val_bpb = audited.result.val_bpb if audited.result.val_bpb is not None else audited.value
            row.heldout_bpb = audited.result.heldout_bpb
            row.audit_seconds = round(audited.result.seconds, 1)

    def cache_changes(self, full: bool) -> list[str]:
        """Quick (size, mtime) after every run; full (sha256) for a keep or when quick sees one."""
        if self.guard is None:
            return []
        if not full and not self.guard.quick_changes():
            return []
        return self.guard.full_changes()  # a touched mtime over the same bytes is no change

    def audit_keep(self, model_path: Path | None, printed: float, env: Mapping[str, str],
                   files: dict | None = None, log: Path | None = None) -> Audited:
        """Re-evaluate the handed-over model with the base commit's prepare.py (val and held-out);
        a declared target: run its audit command on `files` (audit_command), its output to `log`."""
        if self.declared:
            return audit_command(self.target, files, env, self.audit_root, log, self.command)
        result = audit_model(self.prepare_py, model_path, env)
        if result.error:
            return Audited(result, False, f"audit: {result.error}")
        if not matches(printed, result.val_bpb):
            return Audited(result, False, f"audit: train.py printed val_bpb {printed:.6f} but its model scores "
                                          f"{result.val_bpb:.6f} (tolerance {AUDIT_TOLERANCE:g} relative)")
        if not result.causal:
            return Audited(result, False, f"audit: the model sees the tokens it predicts (causal gap "
                                          f"{result.causal_gap:.3g} nats > {CAUSAL_TOLERANCE:g})")
        return Audited(result, True)


def audit_command(target, files: dict, env: Mapping[str, str], scratch: Path, log: Path | None,
                  wrap: Callable | None = None) -> Audited:
    """A declared target's audit of a keep: its `audit` command, from the base commit's fixed
    files with the candidate's edit files, in a fresh folder (sandboxed by `wrap`, like a
    training), killed after the target's timeout. It passes when it exits 0 without touching a
    file it was given: it is a check, its verdict is its exit status. A metric it prints (one
    finite value) is recorded in the row's audit_val_bpb and never decided on: an audit may
    measure other inputs, on another scale (docs/targets.md)."""
    from autoresearch.judge import judge_output
    from autoresearch.trainers import LocalTrainer, TrainJob

    trainer = LocalTrainer("audit", scratch_root=scratch, base_env=env, wrap=wrap)
    try:
        output = trainer.run(TrainJob(0, 0, None, files, {}, target.timeout, command=["/bin/sh", "-c", target.audit]))
    finally:
        shutil.rmtree(trainer.folder, ignore_errors=True)
    text = output.log.decode("utf-8", "replace")
    if log is not None:
        Path(log).parent.mkdir(parents=True, exist_ok=True)
        Path(log).write_text(text)
    result = AuditResult(None, None, output.result.seconds)
    where = f" (see {Path(log).name})" if log is not None else ""
    if output.lost or output.result.status in ("timeout", "cancelled"):
        return Audited(result, False, f"audit: `{target.audit}` {output.lost_reason or output.result.reason}{where}")
    if output.result.returncode:
        last = (text.strip().splitlines() or [""])[-1][:200]
        return Audited(result, False, f"audit: `{target.audit}` exited {output.result.returncode}: {last}{where}")
    touched = [name for name in output.changed if name in files]
    if touched:
        return Audited(result, False, f"audit: the audited code modified {', '.join(touched[:5])}")
    measured = judge_output(replace(target, require=(), constraints=()), text, 0)
    if not measured.ok and f"no {target.metric} line" not in (measured.reason or ""):
        return Audited(result, False, f"audit: {measured.reason}{where}")  # printed, but twice or not a number
    return Audited(result, True, value=measured.value if measured.ok else None)


def choose_sandbox(sandbox: str, note: Callable[[str], None], unsandboxed: str) -> Sandbox | None:
    """bubblewrap when --sandbox is on or auto and it works here; `on` without it is an error,
    `auto` without it one warning line (`unsandboxed`, with the reason in its braces)."""
    if sandbox == "off":
        return None
    found = Sandbox.detect()
    if found.available:
        return found
    if sandbox == "on":
        raise AutoresearchError(f"--sandbox on, but {found.reason}; install bubblewrap or pass --sandbox off")
    note("warning: " + unsandboxed.format(found.reason))
    return None


def rebuild_hint(lab: LabPaths | None) -> str:
    """The one-line instruction after a cache change: rebuild the source from scratch (a re-run
    on top of a tampered file would take the file as it is)."""
    where = f"delete {lab.source} and " if lab is not None else ""
    return f"{where}re-run prepare (python prepare.py with the same --profile/--source), then resume with --resume"


def model_path(run_dir: Path, trial: int) -> Path:
    """runs/NNNN/model.pt2 for trial 1, model.trialK.pt2 for trial K (like the logs)."""
    return Path(run_dir) / ("model.pt2" if trial <= 1 else f"model.trial{trial}.pt2")


def drop_models(run_dir: Path, keep: Path | None = None) -> None:
    """Delete an experiment's handed-over models except `keep` (they are ~200 MB on the GPU)."""
    for path in Path(run_dir).glob("model*.pt2*"):
        if keep is None or path != Path(keep):
            path.unlink(missing_ok=True)
