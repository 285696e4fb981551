"""Issue 9's fault matrix through the real loop: a train.py that games the number or reaches for
what it must not (the held-out split, the cache, the network, files outside the worktree).

Two labs. The trust lab is the real prepare.py on a copy of the session's small stdlib cache
with stand-in train.py scripts (cheap: no model), run with --audit off so the sandbox, the
held-out watch and the cache guard are what is tested. The real lab (slow) is the real train.py
and prepare.py with the audit on: a run whose base train.py learns nothing (every learning rate
0), so that any change that trains is judged a keep and reaches the audit.

Every case ends caught, logged with a reason, not kept, the cache intact or the run stopped with
the instruction to rebuild it, and tests/invariants.py's check_invariants holds.
"""

import shutil
import socket
from pathlib import Path

import git
import pytest

from autoresearch.analysis import read_results, summarize
from autoresearch.cache_guard import CacheGuard
from autoresearch.errors import AutoresearchError
from autoresearch.loop import RunConfig, run
from autoresearch.sandbox import Sandbox
from conftest import REPO_ROOT, lab_env
from invariants import SECRETS, UserCheckout, check_invariants
from reliability import LAB_TRAIN_PY, replace_with
from standin import ScriptedProposer, make_lab
from test_faults_training import STEPS, script
from test_loop import RecordingView

REAL_PREPARE = (REPO_ROOT / "prepare.py").read_text()
REAL_TRAIN = (REPO_ROOT / "train.py").read_text()
needs_bwrap = pytest.mark.skipif(not Sandbox.detect().available, reason="bubblewrap does not work here")

# Inside a stand-in script: the source folder of the lab's cache, as prepare.py resolves it.
SOURCE = 'os.path.join(os.environ["AUTORESEARCH_CACHE"], os.environ["AUTORESEARCH_SOURCE"])'


@pytest.fixture
def cache(lab_cache, tmp_path) -> Path:
    """A private copy of the prepared cache (mtimes kept, so the manifest still matches): some
    cases write into it."""
    copy = tmp_path / "cache"
    shutil.copytree(lab_cache, copy, copy_function=shutil.copy2)
    assert not CacheGuard(copy / "stdlib" / "manifest.json").full_changes()
    return copy


@pytest.fixture
def trust_lab(tmp_repo, cache, monkeypatch):
    for name, value in {**SECRETS, **lab_env(cache)}.items():
        monkeypatch.setenv(name, value)
    return make_lab(tmp_repo, LAB_TRAIN_PY, prepare_py=REAL_PREPARE)


def run_case(root: Path, steps, experiments: int = 3, **overrides):
    proposer = ScriptedProposer(steps)
    proposer.can_fix = False
    cfg = dict(repo_root=root, tag="t", profile="cpu", time_budget=5, timeout=120, pause_seconds=0.01,
               max_experiments=experiments, keep_rule="greedy", baseline_repeats=1, audit="off")
    cfg.update(overrides)
    view = RecordingView()
    return run(RunConfig(**cfg), proposer=proposer, view=view), view, proposer


def fault(body: str) -> str:
    return script(STEPS + body, summary="0.5")  # it would be a keep (the stand-in baseline is 1.0)


READ_HELDOUT = fault("""
sys.path.insert(0, os.getcwd())
import prepare
loader = prepare.make_dataloader(prepare.Tokenizer.from_directory(), 1, prepare.MAX_SEQ_LEN, "heldout")
x, y, _ = next(loader)
print("held-out tokens seen:", int(x.sum()))
""")


def assert_caught(root: Path, view, rows_expected: int = 3) -> list:
    rows = check_invariants(root, "t", rows=rows_expected)
    assert rows[1].status == "crash" and rows[1].val_bpb == 0.0, [(r.status, r.reason) for r in rows]
    assert rows[1].reason
    return rows


# ---------------------------------------------------------------------------
# The held-out split
# ---------------------------------------------------------------------------


@needs_bwrap
def test_reading_the_heldout_split_sandboxed_finds_it_masked(trust_lab, cache):
    outcome, view, _ = run_case(trust_lab, [replace_with(READ_HELDOUT, "peek"), {"VAL": 0.9}])
    rows = assert_caught(trust_lab, view)
    assert rows[1].sandbox == "bwrap" and rows[1].audit == "off"
    assert rows[1].reason.startswith("exit 1: "), rows[1].reason  # the masked file does not load
    assert "held-out tokens seen" not in (trust_lab / "results/t/runs/0001/run.log").read_text()
    assert [r.status for r in rows] == ["keep", "crash", "keep"]


def test_reading_the_heldout_split_unsandboxed_is_seen_by_the_watch(trust_lab, cache):
    outcome, view, _ = run_case(trust_lab, [replace_with(READ_HELDOUT, "peek"), {"VAL": 0.9}], sandbox="off")
    rows = assert_caught(trust_lab, view)
    assert "held-out tokens seen" in (trust_lab / "results/t/runs/0001/run.log").read_text()  # it did read
    assert rows[1].sandbox == "watch"
    assert rows[1].reason.startswith("read the held-out file ") and "heldout" in rows[1].reason, rows[1].reason
    assert [r.status for r in rows] == ["keep", "crash", "keep"]
    assert [n for n in view.notes if "--sandbox off" in n] == [view.notes[0]]  # one warning line, at the start


# ---------------------------------------------------------------------------
# The cache
# ---------------------------------------------------------------------------

WRITES = {
    "val_tokens": "tokens/val.npy",
    "tokenizer": "tokenizer/tokenizer.pkl",
}


@needs_bwrap
@pytest.mark.parametrize("target", sorted(WRITES))
def test_writing_the_cache_sandboxed_fails_and_the_cache_is_intact(trust_lab, cache, target):
    body = fault(f'open(os.path.join({SOURCE}, "{WRITES[target]}"), "ab").write(b"\\0" * 64)\n')
    outcome, view, _ = run_case(trust_lab, [replace_with(body, "poison"), {"VAL": 0.9}])
    rows = assert_caught(trust_lab, view)
    assert "Read-only file system" in rows[1].reason, rows[1].reason
    assert [r.status for r in rows] == ["keep", "crash", "keep"] and outcome.state == "done"
    assert not CacheGuard(cache / "stdlib" / "manifest.json").full_changes()


@pytest.mark.parametrize("target", sorted(WRITES))
def test_writing_the_cache_unsandboxed_is_caught_and_the_run_stops_with_the_rebuild_line(trust_lab, cache, target):
    body = fault(f'open(os.path.join({SOURCE}, "{WRITES[target]}"), "ab").write(b"\\0" * 64)\n')
    with pytest.raises(AutoresearchError) as caught:
        run_case(trust_lab, [replace_with(body, "poison"), {"VAL": 0.9}], sandbox="off")
    message = str(caught.value)
    assert "\n" not in message and f"delete {cache / 'stdlib'} and re-run prepare" in message, message
    rows = check_invariants(trust_lab, "t", rows=2)
    assert rows[1].status == "crash" and rows[1].reason == f"cache file {WRITES[target]} has other contents (sha256 differs from the manifest)"
    # resuming on the poisoned cache refuses to start: never a silently wrong metric (the start-up
    # check sees a tokenizer that no longer matches its tokens first; the manifest check the rest)
    with pytest.raises(AutoresearchError, match="does not match its manifest|made with another tokenizer"):
        run_case(trust_lab, [{"VAL": 0.9}], sandbox="off", resume=True)


# ---------------------------------------------------------------------------
# The network and files outside the worktree
# ---------------------------------------------------------------------------


@needs_bwrap
def test_a_network_connection_is_blocked_by_the_sandbox(trust_lab, cache):
    # No thread blocked in accept(): closing the socket under it raised OSError (Errno 88) in that
    # thread. The kernel queues a completed connection on a listening socket without accept(),
    # so a non-blocking accept() afterwards says whether anything got through.
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]
    body = fault(f'import socket\nsocket.create_connection(("127.0.0.1", {port}), timeout=5).sendall(b"leak")\n')
    try:
        outcome, view, _ = run_case(trust_lab, [replace_with(body, "phone home"), {"VAL": 0.9}])
        server.setblocking(False)
        with pytest.raises(BlockingIOError):
            server.accept()  # the harness's loopback was never reached
    finally:
        server.close()
    rows = assert_caught(trust_lab, view)
    assert "ConnectionRefusedError" in rows[1].reason or "Network is unreachable" in rows[1].reason, rows[1].reason


ESCAPES = {
    "home": 'os.path.join(os.path.expanduser("~"), "autoresearch-escape.txt")',
    # the worktree is .autoresearch/worktrees/t: three levels up is the user's checkout
    "users_checkout": 'os.path.join("..", "..", "..", "escape.txt")',
}


@pytest.fixture
def home_lab(tmp_path, cache, monkeypatch):
    """The trust lab where a user's checkout usually is: under $HOME (here a fresh folder). A
    checkout under /tmp would be covered by the sandbox's own tmpfs instead, where a write lands
    in memory and is gone after the run (never on the host) rather than failing."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    for name, value in {**SECRETS, **lab_env(cache)}.items():
        monkeypatch.setenv(name, value)
    repo = git.Repo.init(home / "repo", initial_branch="main")
    with repo.config_writer() as cfg:
        cfg.set_value("user", "name", "Test User")
        cfg.set_value("user", "email", "test@example.com")
    return make_lab(repo, LAB_TRAIN_PY, prepare_py=REAL_PREPARE)


@needs_bwrap
@pytest.mark.parametrize("where", sorted(ESCAPES))
def test_writing_outside_the_worktree_is_blocked_by_the_sandbox(home_lab, where):
    user = UserCheckout.take(home_lab)
    body = fault(f'open({ESCAPES[where]}, "w").write("escaped")\n')
    outcome, view, _ = run_case(home_lab, [replace_with(body, "escape"), {"VAL": 0.9}])
    rows = check_invariants(home_lab, "t", user, rows=3)
    assert [r.status for r in rows] == ["keep", "crash", "keep"]
    assert rows[1].reason.startswith("exit 1: OSError: [Errno 30] Read-only file system"), rows[1].reason
    assert not (Path.home() / "autoresearch-escape.txt").exists() and not (home_lab / "escape.txt").exists()


# ---------------------------------------------------------------------------
# The real lab: the audit (slow: every keep is trained, handed over and re-evaluated)
# ---------------------------------------------------------------------------

EVAL_LINE = "    val_bpb = evaluate_bpb(model, tokenizer, eval_batch)\n"
HANDOFF_LINE = "    handoff_model(model, eval_batch)\n"
TRAIN_LOADER = 'train_loader = make_dataloader(tokenizer, device_batch, MAX_SEQ_LEN, "train")'


def edit(text: str, old: str, new: str) -> str:
    assert text.count(old) == 1, old
    return text.replace(old, new)


def learns_nothing(text: str) -> str:
    for name in ("EMBEDDING_LR", "UNEMBEDDING_LR", "MATRIX_LR", "SCALAR_LR"):
        text = edit(text, next(line for line in text.splitlines() if line.startswith(f"{name} = ")),
                    f"{name} = 0.0")
    return text


GAMES = {
    "prints_a_fake_val_bpb": edit(REAL_TRAIN, EVAL_LINE, EVAL_LINE + "    val_bpb *= 0.5\n"),
    # one batch of the two, the easier one (measured on this lab: 3.107 and ~2.46 bits per byte)
    "evaluates_on_fewer_tokens": edit(REAL_TRAIN, EVAL_LINE, """\
    import prepare
    easier = prepare.make_dataloader(tokenizer, eval_batch, MAX_SEQ_LEN, "val")
    next(easier)
    loader_of, prepare.make_dataloader = prepare.make_dataloader, lambda *args, **kwargs: easier
    prepare.EVAL_TOKENS = eval_batch * MAX_SEQ_LEN
""" + EVAL_LINE + "    prepare.make_dataloader = loader_of\n"),
    "skips_the_handover": edit(REAL_TRAIN, HANDOFF_LINE, "    pass\n"),
}
TRAINS_ON_VAL = edit(REAL_TRAIN, TRAIN_LOADER, TRAIN_LOADER.replace('"train"', '"val"'))


@pytest.fixture
def real_lab(tmp_repo, cache, monkeypatch):
    for name, value in {**SECRETS, **lab_env(cache)}.items():
        monkeypatch.setenv(name, value)
    return make_lab(tmp_repo, learns_nothing(REAL_TRAIN), prepare_py=REAL_PREPARE)


@pytest.mark.slow
def test_the_audit_catches_gamed_numbers_and_heldout_exposes_training_on_val(real_lab, cache):
    # the games first: each beats the base that learns nothing, so each verdict is a keep to audit
    steps = [*[replace_with(text, name) for name, text in GAMES.items()],
             replace_with(REAL_TRAIN, "learn at all"),
             replace_with(TRAINS_ON_VAL, "train on the validation tokens")]
    outcome, view, proposer = run_case(real_lab, steps, experiments=2 + len(GAMES) + 1, audit="on",
                                       time_budget=3, timeout=300)
    rows = check_invariants(real_lab, "t", rows=2 + len(GAMES) + 1)
    by_name = {r.description: r for r in rows}
    base, honest, on_val = rows[0], by_name["learn at all"], by_name["train on the validation tokens"]
    for row in (base, honest, on_val):  # every keep audited: val recomputed, held-out measured
        assert row.status == "keep" and row.audit == "pass", (row.description, row.reason)
        assert row.val_bpb == pytest.approx(row.audit_val_bpb, abs=1e-6) and row.heldout_bpb > 0
        assert row.audit_seconds > 0 and row.sandbox in ("bwrap", "watch")
    assert honest.val_bpb < base.val_bpb - 0.1  # it learns; the base does not (measured: 3.03 -> 2.78)
    fake, fewer, skipped = (by_name[name] for name in GAMES)
    assert fake.status == "crash" and fake.audit == "fail"
    assert fake.reason.startswith("audit: train.py printed val_bpb") and "but its model scores" in fake.reason
    assert fake.audit_val_bpb > 0  # what the model really scores is on the row
    assert fewer.status == "crash" and fewer.reason.startswith("audit: train.py printed val_bpb"), fewer.reason
    assert skipped.status == "crash" and skipped.reason == "audit: train.py handed over no model (call prepare.handoff_model)"
    # the proposer is told why (the reason is in its history) and never sees a held-out number
    last = proposer.contexts[-1].history
    assert any(e["reason"].startswith("audit: ") for e in last)
    assert all("heldout_bpb" not in e for ctx in proposer.contexts for e in ctx.history)
    # only the kept models stay on disk
    models = sorted(p.relative_to(real_lab / "results/t/runs").as_posix()
                    for p in (real_lab / "results/t/runs").glob("*/model*.pt2"))
    assert models == [f"{row.experiment:04d}/model.pt2" for row in (base, honest, on_val)]
    # training on the validation tokens: val improves, held-out does not keep up; the report flags it
    assert on_val.val_bpb < honest.val_bpb
    summary = summarize(read_results(real_lab / "results/t/results.tsv"))
    flagged = [s["experiment"] for s in summary["heldout"]["steps"] if s["diverges"]]
    assert summary["heldout"]["diverges"] and flagged == [on_val.experiment], summary["heldout"]
