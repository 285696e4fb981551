"""`autoresearch doctor` and the run's preflight for a target declared in autoresearch.toml.

The lab's checks (gpu, data: doctor.py) mean nothing here; what a run of a declared target needs is:

- target:   autoresearch.toml is valid (target.load_target) and `autoresearch run` accepts it.
- command:  the run command's program exists, and the script it names is in the last commit.
- files:    a git repository whose last commit holds the edit and context files as they are:
            a run branches from that commit (workspace.Workspace.create) and every trial runs
            its tree, so an untracked, ignored or uncommitted edit file is not what the run edits.
- sandbox:  bubblewrap as the run would use it (trust.Trust.open_declared: network = true or
            --sandbox off run unsandboxed, --sandbox on without bwrap is refused).
- disk, proposer, agent: doctor.py's.
- dry run:  the command once, run as a run's trial runs it (loop.Run.submit): the whole tree of
            the last commit (with what `prepare` makes, run first: prepare_target.py) in a
            LocalTrainer's scratch folder, in the sandbox; the metric
            parses (else the `name: value` lines it printed); it modified no file of the tree.
            A failure in the sandbox runs once more without it, to say whether the sandbox is why.
- requires: the require lines were printed, the constraints hold.
- timeout:  the dry run finished within `timeout`.

Cheap checks come first and the dry run last, so preflight_target (which stops at the first
failure) refuses a rejected key in a second, not after a run.
"""

import os
import shlex
import shutil
import subprocess
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path

from autoresearch.doctor import Check, check_agent, check_disk, check_proposer, preflight
from autoresearch.errors import AutoresearchError
from autoresearch.proposers.base import ProposerOptions

TOML_FIX = "edit autoresearch.toml (docs/targets.md)"


def preflight_run(config, target, proposer: str | None) -> list[Check]:
    """loop.run's start-up checks, before results/<tag>/ exists: the lab's (gpu, data, disk,
    proposer), or a declared target's (doctor_target). Raises the first failure as one line."""
    env = {**os.environ, **config.extra_env}
    if target is None:
        from autoresearch.lab import detect_profile

        profile = config.profile or os.environ.get("AUTORESEARCH_PROFILE") or detect_profile()
        return preflight(config.repo_root, profile, proposer, config.options, env)  # the lab's (doctor.py)
    from autoresearch.trials import RunPaths

    fresh = not RunPaths(config.repo_root, config.tag).state.is_file()  # a resume runs its branch, not HEAD
    sandbox = config.sandbox if config.ray is None else "off"  # Ray's workers run unsandboxed (opening.open_pool)
    prepared = None
    if fresh and target.prepare:  # the run's own folder: its start reuses what the dry run prepared
        import git

        from autoresearch.workspace import ensure_ignored

        ensure_ignored(git.Repo(config.repo_root))
        prepared = Path(config.repo_root) / ".autoresearch" / "prepared"
    if fresh:  # the one slow step of a start: say what it waits for
        first = f"`{target.prepare}`, then " if target.prepare else ""
        print(f"preflight: {first}one dry run of `{target.run}` (autoresearch doctor's checks) before anything "
              "is created", flush=True)
    return preflight_target(config.repo_root, proposer, config.options, env, target=target, sandbox=sandbox,
                            extra_env=config.extra_env, fresh=fresh, prepared=prepared)


def preflight_target(root: Path, proposer: str | None, options: ProposerOptions | None = None,
                     env: Mapping[str, str] | None = None, **settings) -> list[Check]:
    """target_checks, stopping at the first failure (the dry run comes last: a refused key costs
    a second, not a run) and raising it as one AutoresearchError line."""
    from contextlib import closing

    done = []
    try:
        with closing(target_checks(root, proposer, options, env, **settings)) as checks:
            for c in checks:
                if not c.ok:
                    raise AutoresearchError(f"{c.name}: {c.detail}; fix: {c.fix} (see `autoresearch doctor`)")
                done.append(c)
    except KeyboardInterrupt:  # Ctrl-C in the dry run (its processes are gone): nothing was created
        raise AutoresearchError("stopped during the start-up checks; nothing was created") from None
    return done


def target_checks(root: Path, proposer: str | None, options: ProposerOptions | None = None,
                  env: Mapping[str, str] | None = None, *, target=None, sandbox: str = "auto",
                  extra_env: Mapping[str, str] | None = None, fresh: bool = True,
                  prepared: Path | None = None) -> Iterator[Check]:
    """The checks of a run on the target declared in root/autoresearch.toml, in the order of the
    module's docstring (`target` given: loaded already, no target check). `fresh` False (a
    resume: the run goes on from its branch, not from the last commit): no files check, no dry
    run. `prepared`: the folder for `prepare`'s result (the run's, so that it reuses it; else a
    temporary one). A generator, so that preflight_target stops at the first failure."""
    env = os.environ if env is None else env
    options = options or ProposerOptions()
    root = Path(root).resolve()
    if target is None:
        target, check = _load_declared(root)
        yield check
    command = _check_command(root, target, fresh) if target is not None else None
    if command is not None:
        yield command
    repo = None
    if target is not None and fresh:
        repo, check = _check_files(root, target)
        yield check
    with tempfile.TemporaryDirectory(prefix="autoresearch-doctor-") as scratch:
        trust = None
        if target is not None:
            trust, check = _check_sandbox(target, sandbox, Path(scratch) / "sandbox")
            yield check
        yield check_disk(root / "results")
        if proposer is not None:
            yield check_proposer(proposer, options, env)
            if proposer == "command":
                yield check_agent(options.command, root, env)
        if repo is not None and trust is not None and command.ok:
            yield from _dry_run_checks(root, target, trust, Path(scratch) / "workers", extra_env or {},
                                       prepared or Path(scratch) / "prepared")


def _load_declared(root: Path):
    """(the target or None, the target check): the file's own rules, then what `autoresearch run`
    refuses of a valid file (opening.load_declared). Command errors are the command check's."""
    from types import SimpleNamespace

    from autoresearch.opening import load_declared
    from autoresearch.target import load_target

    try:
        target = load_target(root, check_commands=False)
    except AutoresearchError as err:
        return None, Check("target", False, *_split(str(err), TOML_FIX))
    if target is None:
        return None, Check("target", False, f"no autoresearch.toml in {root}", "autoresearch init (docs/targets.md)")
    if _check_command(root, target).ok:
        try:
            load_declared(SimpleNamespace(repo_root=root))
        except AutoresearchError as err:
            return None, Check("target", False, *_split(str(err), TOML_FIX))
    return target, _describe(target)


def _describe(target) -> Check:
    better = "higher" if target.higher_is_better else "lower"
    return Check("target", True, f"edit {', '.join(target.edit)}; `{target.run}`; {target.metric}, {better} is "
                                 f"better; timeout {target.timeout:g} s")


def _split(message: str, default_fix: str) -> tuple[str, str]:
    """A one-line error as (what was seen, the fix): its last `; ` part when there is one."""
    message = message.removeprefix("autoresearch.toml: ")
    if "; " in message:
        detail, fix = message.rsplit("; ", 1)
        return detail, fix
    return message, default_fix


def _check_command(root: Path, target, fresh: bool = True) -> Check:
    """The programs of run, prepare and audit exist (target.check_command), and (`fresh`: a new
    run) the scripts they name are in the last commit (a run's tree is that commit's, not the
    folder's)."""
    from autoresearch.target import check_command

    try:
        for key, command in (("run", target.run), ("prepare", target.prepare), ("audit", target.audit)):
            if command:
                check_command(root, command, key)
    except AutoresearchError as err:
        return Check("command", False, *_split(str(err), "fix `run` in autoresearch.toml"))
    for key, command in (("run", target.run), ("prepare", target.prepare), ("audit", target.audit)):
        script = _script(command) if command and fresh else None
        if script is not None and _git(root, "ls-files", "--error-unmatch", "--", script) is None:
            return Check("command", False,
                         f"{script}, which `{key}` runs, is not committed: a run's tree is the last commit's",
                         f"git add {script} && git commit")
    words = _words(target.run)
    program = words[0] if words else target.run
    found = shutil.which(program) if "/" not in program else str(root / program)
    return Check("command", True, f"`{target.run}`" + (f": {program} -> {found}" if found else ""))


def _words(command: str) -> list[str]:
    """The command's words without leading variable assignments (FOO=1 python x.py)."""
    words = shlex.split(command)
    while words and "=" in words[0] and words[0].split("=", 1)[0].isidentifier():
        words.pop(0)
    return words


def _script(command: str) -> str | None:
    """The repository file a command runs: `python x.py`'s x.py, or a relative `./tool`."""
    words = _words(command)
    script = None
    if words and Path(words[0]).name.startswith("python") and len(words) > 1 and words[1].endswith(".py"):
        script = words[1]
    elif words and "/" in words[0] and not Path(words[0]).is_absolute():
        script = words[0]
    return os.path.normpath(script).replace(os.sep, "/") if script is not None else None


def _git(root: Path, *args: str) -> str | None:
    """git's output in `root`, or None when it fails."""
    done = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, stdin=subprocess.DEVNULL)
    return done.stdout if done.returncode == 0 else None


def _check_files(root: Path, target):
    """(the git repository, None without a commit; the files check). A run branches from the last
    commit and runs its tree: an edit or context file that is untracked, ignored or changed since
    is not what the run edits and runs (the dry run still runs: it shows what the run would)."""
    import git
    from git.exc import InvalidGitRepositoryError, NoSuchPathError

    try:
        repo = git.Repo(root)
    except (InvalidGitRepositoryError, NoSuchPathError):
        return None, Check("files", False, f"{root} is not the top folder of a git repository (a run commits every "
                                           f"experiment on a branch)", "git init && git add -A && git commit -m 'my program'")
    if not repo.head.is_valid():
        return None, Check("files", False, f"{root} has no commit yet (a run branches from the last one)",
                           "git add -A && git commit -m 'my program'")
    named = [*target.edit, *target.context]
    status = repo.git.status("--porcelain=v1", "-z", "--untracked-files=all", "--ignored", "--no-renames", "--", *named)
    for entry in (e for e in status.split("\0") if e):
        code, name = entry[:2], entry[3:]
        role = "edit" if name in target.edit else "context"
        if code in ("??", "!!"):
            why = "ignored by git" if code == "!!" else "not tracked by git"
            add = "git add -f" if code == "!!" else "git add"
            return repo, Check("files", False, f"{role} file {name} is {why}: a run's branch starts from the last "
                                               f"commit, which lacks it", f"{add} {name} && git commit")
        return repo, Check("files", False, f"{role} file {name} has uncommitted changes: a run starts from the last "
                                           f"commit, without them",
                           f"git commit {name} (or git checkout -- {name} to drop them)")
    read_here = {*named, "autoresearch.toml", "program.md"}  # a run reads these two from this folder
    dirty = [e[3:] for e in repo.git.status("--porcelain=v1", "-z", "--untracked-files=no", "--no-renames").split("\0")
             if e and e[3:] not in read_here]
    shown = [f"{name} (edit)" for name in target.edit] + [f"{name} (context)" for name in target.context]
    detail = f"{', '.join(shown)} committed at {repo.head.commit.hexsha[:7]}"
    if dirty:
        detail += (f"; {len(dirty)} other tracked file(s) changed since ({', '.join(dirty[:3])}"
                   f"{', ...' if len(dirty) > 3 else ''}): runs use the committed versions")
    return repo, Check("files", True, detail)


def _check_sandbox(target, sandbox: str, scratch: Path):
    """(the run's Trust or None, the sandbox check), decided as opening.open_trust decides it."""
    from autoresearch.trust import Trust

    notes = []
    try:
        trust = Trust.open_declared(sandbox, scratch, notes.append, target)
    except AutoresearchError as err:
        return None, Check("sandbox", False, *_split(str(err), "pass --sandbox off"))
    if trust.sandbox is not None:
        return trust, Check("sandbox", True, "bubblewrap: the run's tree read-only, no network; the dry run runs in it")
    said = "; ".join(n.removeprefix("warning: ") for n in notes) or "--sandbox off: the experiment runs unsandboxed"
    return trust, Check("sandbox", True, said)


def _dry_run_checks(root: Path, target, trust, workers: Path, extra_env: Mapping[str, str],
                    prepared: Path) -> Iterator[Check]:
    """One run of the last commit's tree as a run's trial runs it (dry run, requires, timeout);
    a failure in the sandbox is run once more without it, to say whether the sandbox is why."""
    from dataclasses import replace

    from autoresearch.judge import judge_output

    wrap = (lambda argv, lab, out: trust.command(argv, lab, out)) if trust.sandbox is not None else None  # noqa: E731
    try:
        output, tree = run_committed(root, target, workers, wrap, extra_env, prepared)
    except AutoresearchError as err:  # prepare failed
        yield Check("prepare", False, str(err), "make `prepare` in autoresearch.toml succeed in a clean checkout")
        return
    result = output.result
    if output.lost or result.status == "timeout":
        if result.status == "timeout":
            yield Check("timeout", False, f"the dry run of `{target.run}` did not finish in {target.timeout:g} s",
                        "raise `timeout` in autoresearch.toml, or make one run faster")
        else:
            yield Check("dry run", False, f"could not run `{target.run}`: {output.lost_reason}",
                        "make room in the temporary folder ($TMPDIR), then try again")
        return
    log = output.log.decode("utf-8", "replace")
    bare = judge_output(replace(target, require=(), constraints=()), log, result.returncode)
    modified = [name for name in output.changed if name in tree]
    failure = f"the run modified {', '.join(modified[:3])}" if modified else bare.reason
    if failure and wrap is not None:
        again, _ = run_committed(root, target, workers, None, extra_env, prepared)
        plain = judge_output(target, again.log.decode("utf-8", "replace"), again.result.returncode)
        if again.result.status != "timeout" and plain.ok and not [n for n in again.changed if n in tree]:
            yield Check("dry run", False, f"`{target.run}` fails in the sandbox ({failure}) but not without it",
                        "the sandbox cuts the network and makes all but $TMPDIR read-only: write there, set "
                        "network = true in autoresearch.toml, or pass --sandbox off")
            return
    if modified:
        yield Check("dry run", False, f"the run modified {', '.join(modified[:3])}, a file of the tree (a crash in a run)",
                    "write new files (or under $TMPDIR) instead")
        return
    if not bare.ok:
        if result.returncode == 0:
            fix = (f"set `metric` in autoresearch.toml to a name it prints, or make `{target.run}` print "
                   f"`{target.metric}: <number>`")
        else:
            fix = f"make `{target.run}` exit 0 in a clean checkout of your last commit (what a run executes)"
        yield Check("dry run", False, f"`{target.run}`: {bare.reason}", fix)
        return
    better = "higher" if target.higher_is_better else "lower"
    yield Check("dry run", True, f"{target.metric} = {bare.value:g} ({better} is better), in {result.seconds:.1f} s")
    full = judge_output(target, log, result.returncode)
    if not full.ok:
        yield Check("requires", False, full.reason,
                    "make the run print it, or fix `require` / `constraints` in autoresearch.toml")
        return
    seen = [f"`{line}` seen" for line in target.require]
    seen += [f"{c.name} = {full.metrics[c.name]:g} ({c})" for c in target.constraints]
    yield Check("requires", True, "; ".join(seen) if seen else "no require lines or constraints declared")
    share = result.seconds / target.timeout
    yield Check("timeout", True, f"{result.seconds:.1f} s of the {target.timeout:g} s timeout"
                + ("; over half of it: a loaded machine may time out" if share > 0.5 else ""))


def run_committed(root: Path, target, workers: Path, wrap=None, extra_env: Mapping[str, str] | None = None,
                  prepared: Path | None = None):
    """(TrainOutput, the tree): one run of the target's command as a run's baseline trial
    executes it (loop.Run.submit): the whole tree of the last commit, with the files `prepare`
    made (run first in `prepared`, or reused from there), in a LocalTrainer's scratch folder, the
    trial's variables, `wrap` (the sandbox) around the command."""
    import git

    from autoresearch.lab import LabSettings
    from autoresearch.runner import training_defaults
    from autoresearch.trainers import LocalTrainer, TrainJob

    tree = {b.path: b.data_stream.read() for b in git.Repo(root).head.commit.tree.traverse() if b.type == "blob"}
    env = LabSettings("cpu", target.timeout, target.timeout, dict(extra_env or {}), "").env(1)
    env.update(training_defaults({**os.environ, **env}))
    if target.prepare:
        from autoresearch.prepare_target import prepare_files
        from autoresearch.runner import training_env

        tree.update(prepare_files(target, tree, prepared or Path(workers) / "prepared", training_env(os.environ, env)))
    trainer = LocalTrainer("doctor", scratch_root=workers, wrap=wrap)
    output = trainer.run(TrainJob(0, 1, None, tree, env, target.timeout, command=target.argv()))
    shutil.rmtree(trainer.folder, ignore_errors=True)
    return output, tree
