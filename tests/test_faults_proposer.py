"""Proposer faults through the real loop: the openai and anthropic proposers through their real
SDKs against the local fake server (tests/fake_llm_server.py), and the command proposer with
hostile shell agents. A failed proposal is never a row; it is recorded in the experiment's
proposal.json and run.json, undone in the worktree, and the loop asks again (pausing after too
many failures in a row). Every case ends with the invariants of issue #5.
"""

import json
import shlex
import threading
from http.server import ThreadingHTTPServer
from pathlib import Path

import pytest
from fake_llm_server import FakeLLMServer, reply, slow, status

from autoresearch.loop import RunConfig, run
from autoresearch.proposers import ProposerOptions, get_proposer
from autoresearch.records import RunState
from invariants import SECRETS, check_invariants
from reliability import LAB_TRAIN_PY, make_user_lab
from standin import set_constants
from test_loop import RecordingView
from autoresearch.proposers.base import Proposer

VAL_LINE = "VAL = 1.000000  # the val_bpb this run reports"


def edit(val: float, path: str = "train.py", search: str = VAL_LINE, description: str | None = None) -> str:
    """A well-formed reply that sets VAL (or replaces `search`), for `path`."""
    replace = search.replace("1.000000", f"{val:.6f}") if search == VAL_LINE else f"{search}\n# changed"
    return (
        f"HYPOTHESIS: VAL {val} lowers val_bpb\nDESCRIPTION: {description or f'VAL -> {val}'}\n\n"
        f"{path}\n```\n<<<<<<< SEARCH\n{search}\n=======\n{replace}\n>>>>>>> REPLACE\n```\n"
    )


@pytest.fixture
def user_lab(tmp_repo, monkeypatch):
    for name, value in SECRETS.items():
        monkeypatch.setenv(name, value)
    for name in ("OPENAI_BASE_URL", "ANTHROPIC_BASE_URL", "AUTORESEARCH_PRICES"):
        monkeypatch.delenv(name, raising=False)
    return make_user_lab(tmp_repo)


@pytest.fixture
def server():
    with FakeLLMServer() as s:
        yield s


def llm(backend: str, url: str, **options):
    """The real proposer; its key is one of the secrets that must not leak."""
    key = SECRETS["OPENAI_API_KEY" if backend == "openai" else "ANTHROPIC_API_KEY"]
    base = url + "/v1" if backend == "openai" else url
    opts = dict(api_key=key, base_url=base, model="gpt-5.5" if backend == "openai" else "claude-opus-5-5",
                api_retries=2, timeout=10)
    opts.update(options)
    return get_proposer(backend, ProposerOptions(**opts))


def run_loop(root: Path, proposer, experiments: int = 2, view=None, **overrides):
    cfg = dict(repo_root=root, tag="t", profile="cpu", time_budget=5, timeout=60, pause_seconds=0.01,
               max_experiments=experiments, max_consecutive_proposer_failures=50,
               keep_rule="greedy", baseline_repeats=1, audit="off",  # one trial each: these tests are about faults
               speculate=False)  # in order: the server plays its replies as asked (test_speculation.py)
    cfg.update(overrides)
    view = view or RecordingView()
    outcome = run(RunConfig(**cfg), proposer=proposer, view=view)
    return outcome, view


def failures(root: Path, experiment: int = 1) -> list[str]:
    record = json.loads((root / f"results/t/runs/{experiment:04d}/proposal.json").read_text())
    return [f["error"] for f in record.get("failures", [])]


BACKENDS = ["openai", "anthropic"]


# ---------------------------------------------------------------------------
# The network: retried by the SDK, or a failed proposal
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
def test_429_and_5xx_are_retried_and_the_experiment_is_logged_once(user_lab, server, backend):
    root, user = user_lab
    server.push(status(429, "slow down"), status(503, "overloaded"), reply(edit(0.9), 1000, 200))
    outcome, _ = run_loop(root, llm(backend, server.url))

    rows = check_invariants(root, "t", user, rows=2)
    assert outcome.state == "done" and rows[1].status == "keep" and rows[1].val_bpb == pytest.approx(0.9)
    assert (rows[1].input_tokens, rows[1].output_tokens, rows[1].proposer) == (1000, 200, backend)
    assert len(server.requests) == 3 and failures(root) == []
    assert RunState.load(root / "results/t/run.json")["failed_proposals"] == 0


@pytest.mark.parametrize("backend", BACKENDS)
def test_timeout_refused_connection_and_errors_are_failed_proposals_then_the_loop_goes_on(user_lab, server, backend):
    root, user = user_lab
    key = SECRETS["OPENAI_API_KEY" if backend == "openai" else "ANTHROPIC_API_KEY"]
    server.push(slow(3.0), status(500, "boom"), status(401, f"Incorrect API key provided: {key}"),
                reply(edit(0.9)))
    proposer = llm(backend, server.url, timeout=1.0, api_retries=0)
    refused = llm(backend, "http://127.0.0.1:9", api_retries=0)
    calls = iter([refused, proposer, proposer, proposer, proposer])

    class Switching(Proposer):  # first call to a closed port, then the fake server
        name, can_fix = backend, True

        def propose(self, ctx):
            return next(calls).propose(ctx)

    run_loop(root, Switching())
    rows = check_invariants(root, "t", user, rows=2)
    assert [r.status for r in rows] == ["keep", "keep"]
    errors = failures(root)
    assert len(errors) == 4, errors
    assert "cannot connect to http://127.0.0.1:9" in errors[0]
    assert "timed out after 1s" in errors[1]
    assert "HTTP 500: boom" in errors[2]
    assert "HTTP 401" in errors[3] and key not in errors[3]
    assert RunState.load(root / "results/t/run.json")["failed_proposals"] == 4


@pytest.mark.parametrize("backend", BACKENDS)
def test_replies_that_cannot_be_applied_are_sent_back_and_then_fail_without_a_row(user_lab, server, backend):
    root, user = user_lab
    twice = "\n".join(["HYPOTHESIS: h", "DESCRIPTION: d", "<<<<<<< SEARCH", "# " + "-" * 75, "=======",
                       "# changed", ">>>>>>> REPLACE"])
    server.push(
        # One proposal: 4 replies (1 + 3 edit retries), none usable.
        reply(""), reply("I'm sorry, but I can't help with that request."),
        reply("HYPOTHESIS: a lower VAL helps\nDESCRIPTION: lower VAL\nJust set VAL to 0.5, it will work."),
        reply(edit(0.9, search="VAL = 2.0  # not there")),
        # The next: a block matching twice, paths out of the worktree, then a usable one.
        reply(twice), reply(edit(0.9, path="../train.py")), reply(edit(0.9, path="/etc/train.py")),
        reply(edit(0.9)),
    )
    run_loop(root, llm(backend, server.url))

    rows = check_invariants(root, "t", user, rows=2)
    assert rows[1].status == "keep" and rows[1].val_bpb == pytest.approx(0.9)
    errors = failures(root)
    assert len(errors) == 1 and "no applicable edit after 4 replies" in errors[0]
    assert "was not found in train.py" in errors[0]  # the last of the four problems
    sent_back = [r.body["messages"][-1]["content"] for r in server.requests[1:]]
    assert "no SEARCH/REPLACE block" in sent_back[0]  # after the empty reply
    assert "no SEARCH/REPLACE block" in sent_back[1] and "no SEARCH/REPLACE block" in sent_back[2]
    assert "matches 2 places" in sent_back[4]
    assert "leaves the repository" in sent_back[5]
    assert "absolute path" in sent_back[6]
    assert len(server.requests) == 8


@pytest.mark.parametrize("path", ["prepare.py", "program.md", "sub/train.py", "./../t/train.py"])
def test_an_edit_to_another_file_is_refused(user_lab, server, path):
    root, user = user_lab
    search = "MAX_SEQ_LEN = 64  # context length" if path == "prepare.py" else VAL_LINE
    server.push(*[reply(edit(0.9, path=path, search=search))] * 4, reply(edit(0.9)))
    run_loop(root, llm("openai", server.url))
    rows = check_invariants(root, "t", user, rows=2)
    assert rows[1].status == "keep"
    assert "Only train.py may be edited" in failures(root)[0]
    assert (root / ".autoresearch/worktrees/t/prepare.py").read_text().startswith('"""Stub prepare.py')


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_reply_of_several_megabytes_leaves_one_sane_row(user_lab, server, backend):
    root, user = user_lab
    huge = "Let me think step by step.\t" * 200_000  # ~5 MB of prose, tabs included
    description = "VAL down\t" + "x" * 2_000_000 + "\r\n"
    server.push(reply(huge + "\n" + edit(0.9, description=description) + huge))
    run_loop(root, llm(backend, server.url))
    rows = check_invariants(root, "t", user, rows=2)
    assert rows[1].status == "keep" and rows[1].description.startswith("VAL down x")
    assert len(rows[1].description) <= 300 and len(rows[1].hypothesis) <= 300
    assert (root / "results/t/results.tsv").stat().st_size < 10_000


# ---------------------------------------------------------------------------
# Too many failures in a row: pause, then resume from the same state
# ---------------------------------------------------------------------------


class LateServer(FakeLLMServer):
    """A FakeLLMServer on a fixed port that is only opened by start()."""

    def __init__(self, port: int):
        super().__init__()
        self._httpd.server_close()
        self.port = port

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self):
        self._httpd = ThreadingHTTPServer(("127.0.0.1", self.port), self._handler())
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, args=(0.05,), daemon=True)
        self._thread.start()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self._thread.is_alive():
            super().__exit__(*exc)


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("backend", BACKENDS)
def test_an_api_that_is_down_pauses_the_run_which_resumes_from_the_same_state(user_lab, backend):
    root, user = user_lab
    late = LateServer(free_port())
    late.push(reply(edit(0.9)))
    seen = []

    class Watching(RecordingView):  # the API comes back during the second pause
        def note(self, text):
            super().note(text)
            if text.startswith("paused"):
                seen.append(RunState.load(root / "results/t/run.json")["state"])
                if len(seen) == 2:
                    late.start()

    with late:
        _, view = run_loop(root, llm(backend, late.url, api_retries=0), max_consecutive_proposer_failures=3,
                           pause_seconds=0.2, pause_max_seconds=600, view=Watching())

    assert seen == ["paused", "paused"]
    notes = [n for n in view.notes if n.startswith("paused")]
    assert notes == [f"paused asking: the proposer failed 3 times in a row; asking again in {s:g} s (trainings go on; "
                     "Ctrl-C stops; resume later with --resume)" for s in (0.2, 0.4)]
    rows = check_invariants(root, "t", user, rows=2)
    assert [(r.experiment, r.status, r.parent) for r in rows] == [(0, "keep", rows[0].commit), (1, "keep", rows[0].commit)]
    state = RunState.load(root / "results/t/run.json")
    assert state["state"] == "done" and state["failed_proposals"] == 6
    assert len(failures(root)) == 6 and all("cannot connect" in e for e in failures(root))


# ---------------------------------------------------------------------------
# The command proposer: an agent that edits more than train.py
# ---------------------------------------------------------------------------


def agent(tmp_path: Path, first: str) -> str:
    """A shell agent that does `first` on its first call and an honest edit afterwards."""
    counter = tmp_path / "calls"
    good = "sed -i 's/^VAL = .*/VAL = 0.9  # lower/' train.py"
    return (f"n=$(cat {counter} 2>/dev/null || echo 0); echo $((n+1)) > {counter}; "
            f"if [ $n = 0 ]; then {first}; else {good}; fi")


def command_proposer(cmd: str):
    return get_proposer("command", ProposerOptions(command=cmd, timeout=30))


HOSTILE_AGENTS = {
    "edits_prepare_py": ("sed -i 's/^VAL = .*/VAL = 0.5/' train.py && echo 'EVAL_TOKENS = 1' >> prepare.py",
                         "changed files other than train.py: prepare.py"),
    "adds_a_file": ("sed -i 's/^VAL = .*/VAL = 0.5/' train.py && mkdir -p lib && echo x > lib/helper.py",
                    "changed files other than train.py: lib/helper.py"),
    "links_to_the_users_checkout": (
        "sed -i 's/^VAL = .*/VAL = 0.5/' train.py && ln -s ../../../program.md notes.md",
        "changed files other than train.py: notes.md"),
    "removes_train_py": ("rm train.py", "command removed train.py"),
    "fails": ("echo 'rate limited' && exit 3", "command exited with status 3"),
}


@pytest.mark.parametrize("name", HOSTILE_AGENTS)
def test_a_command_agent_that_touches_more_than_train_py_is_a_failed_proposal(user_lab, tmp_path, name):
    root, user = user_lab
    first, error = HOSTILE_AGENTS[name]
    run_loop(root, command_proposer(agent(tmp_path, first)))
    rows = check_invariants(root, "t", user, rows=2)
    assert [r.status for r in rows] == ["keep", "keep"] and rows[1].val_bpb == pytest.approx(0.9)
    assert error in failures(root)[0]


def test_a_command_agent_that_makes_train_py_a_symlink_out_of_the_worktree_is_refused(user_lab, tmp_path):
    root, user = user_lab
    outside = tmp_path / "outside.py"
    text = set_constants(LAB_TRAIN_PY, VAL=0.5)
    outside.write_text(text)
    run_loop(root, command_proposer(agent(tmp_path, f"rm train.py && ln -s {shlex.quote(str(outside))} train.py")))

    assert outside.read_text() == text  # the harness never wrote through the link
    rows = check_invariants(root, "t", user, rows=2)
    assert rows[1].val_bpb == pytest.approx(0.9)
    assert "symlink" in failures(root)[0]


def test_a_command_agent_that_commits_its_changes_cannot_smuggle_in_other_files(user_lab, tmp_path):
    root, user = user_lab
    first = ("sed -i 's/^VAL = .*/VAL = 0.5/' train.py && echo 'EVAL_TOKENS = 1' >> prepare.py && "
             "git -c user.name=a -c user.email=a@a commit -qam 'agent commit'")
    run_loop(root, command_proposer(agent(tmp_path, first)))
    check_invariants(root, "t", user, rows=2)
    assert "\nEVAL_TOKENS = 1\n" not in (root / ".autoresearch/worktrees/t/prepare.py").read_text()
    assert "changed files other than train.py: prepare.py" in failures(root)[0]


def test_a_command_agent_that_commits_only_train_py_is_accepted_without_its_commit(user_lab, tmp_path):
    import git

    root, user = user_lab
    first = ("sed -i 's/^VAL = .*/VAL = 0.9  # lower/' train.py && "
             "git -c user.name=a -c user.email=a@a commit -qam 'agent commit'")
    run_loop(root, command_proposer(agent(tmp_path, first)))
    rows = check_invariants(root, "t", user, rows=2)
    assert rows[1].status == "keep" and rows[1].val_bpb == pytest.approx(0.9) and failures(root) == []
    log = git.Repo(root).git.log("--format=%an %s", "autoresearch/t").splitlines()
    assert len(log) == 2 and log[0].startswith("autoresearch ") and "agent commit" not in "\n".join(log)
