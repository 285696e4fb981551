"""A declared target's `prepare` command: run once per run, before its first experiment.

What it is for: data to generate or download, a reference answer to compute, a tool to build; the
lab's counterpart is `autoresearch prepare` (prepare.py). It runs in a folder of its own,
.autoresearch/prepared/<key>/tree, holding the run's base commit's files, unsandboxed and with
the network (it is the user's fixed code, not a proposal's). The files it creates there are fixed
files of the run: every experiment's folder gets them, and an experiment that changes one is a
crash. Large data belongs outside the repository (an absolute cache path the experiment reads),
so what it leaves in the tree is capped at MAX_BYTES.

The key is a hash of the command and the tree, so it runs again only when one of them changed
(or a prepared file is gone): a resumed run, the run after its preflight's dry run, and the arms
of an A/B (which share their baseline) all reuse one result. A lock makes a second run wait for
the first; a prepare that a killed harness left running is stopped before it runs again.
"""

import fcntl
import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Mapping

from autoresearch.errors import AutoresearchError
from autoresearch.process import kill_orphan
from autoresearch.runner import run_training

MAX_BYTES = 256 << 20  # what prepare may leave in the tree, in all (it travels with every experiment)
MIN_TIMEOUT = 3600.0  # seconds; a download takes longer than one experiment
SKIPPED = ("__pycache__", ".git")


def prepare_files(target, files: Mapping[str, bytes], root: Path, env: Mapping[str, str], log: Path | None = None,
                  note=None) -> dict[str, bytes]:
    """Run `target.prepare` once in root/<key>/tree, which holds `files` (the base commit's tree),
    and return the files it created, by relative path. Its output is root/<key>/prepare.log,
    copied to `log` when given. A failure is an AutoresearchError of one line naming the log.
    The same command and tree again reuse the result (the module's docstring)."""
    key = _key(target.prepare, files)
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    with open(root / f"{key[:16]}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another run preparing the same: wait for its result
        return _prepare(target, files, root / key[:16], key, env, log, note)


def _prepare(target, files: Mapping[str, bytes], folder: Path, key: str, env: Mapping[str, str], log: Path | None,
             note) -> dict[str, bytes]:
    tree, stamp, own_log = folder / "tree", folder / "prepared.json", folder / "prepare.log"
    if stamp.is_file():
        try:
            done = json.loads(stamp.read_text())
            if done.get("key") == key:
                created = _read(tree, done["created"])
                _copy_log(own_log, log)
                return created
        except (ValueError, KeyError, OSError):
            pass  # anything unreadable or missing: prepare again
    kill_orphan(folder / "prepare.json")  # a killed harness's prepare, still running
    if folder.exists():
        shutil.rmtree(folder)
    tree.mkdir(parents=True)
    for name, data in files.items():
        path = tree / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(_bytes(data))
    if note is not None:
        note(f"prepare: running `{target.prepare}` once (log: {log or own_log})")
    timeout = max(MIN_TIMEOUT, target.timeout)
    result = run_training(tree, own_log, timeout, dict(env), command=["/bin/sh", "-c", target.prepare],
                          pid_file=folder / "prepare.json")
    _copy_log(own_log, log)
    log = log or own_log
    if result.status == "timeout":
        raise AutoresearchError(f"prepare `{target.prepare}` ran past {timeout:g} s; see {log}")
    if result.returncode:
        last = (log.read_text(errors="replace").strip().splitlines() or [""])[-1][:200]
        raise AutoresearchError(f"prepare `{target.prepare}` exited {result.returncode}: {last} (see {log}); "
                                "fix it, then resume with --resume")
    created, changed, total = [], [], 0
    for path in sorted(tree.rglob("*")):
        name = path.relative_to(tree).as_posix()
        if any(part in SKIPPED for part in path.relative_to(tree).parts) or path.is_dir():
            continue
        if name in files:
            if not path.is_file() or path.read_bytes() != _bytes(files[name]):
                changed.append(name)
            continue
        if path.is_symlink() or not path.is_file():
            raise AutoresearchError(f"prepare `{target.prepare}` left {name}, which is not a regular file; "
                                    "write files only")
        created.append(name)
        total += path.stat().st_size
    changed += sorted(name for name in files if not (tree / name).exists())
    if changed:
        raise AutoresearchError(f"prepare `{target.prepare}` changed {', '.join(changed[:3])}, a committed file; "
                                "it may only create files (commit what must change)")
    if total > MAX_BYTES:
        raise AutoresearchError(f"prepare `{target.prepare}` left {total >> 20} MiB in the repository tree "
                                f"(at most {MAX_BYTES >> 20} MiB travel with each experiment); write large data "
                                "to a cache folder outside the repository and read it from there")
    tmp = stamp.with_suffix(".tmp")
    tmp.write_text(json.dumps({"key": key, "created": created}))
    os.replace(tmp, stamp)
    return _read(tree, created)


def _copy_log(own: Path, log: Path | None) -> None:
    if log is not None and own.is_file():
        Path(log).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(own, log)


def _read(tree: Path, names: list[str]) -> dict[str, bytes]:
    return {name: (tree / name).read_bytes() for name in names}  # a file gone: OSError, prepared again


def _bytes(data) -> bytes:
    return data if isinstance(data, bytes) else data.encode("utf-8")


def _key(command: str, files: Mapping[str, bytes]) -> str:
    digest = hashlib.sha256(command.encode())
    for name in sorted(files):
        digest.update(name.encode() + b"\0" + hashlib.sha256(_bytes(files[name])).digest())
    return digest.hexdigest()
