"""autoresearch.toml: loading, validation (one-line errors naming the fix), the lab as a Target,
and the files the loop hands to proposers and writes back."""

from pathlib import Path

import pytest

from autoresearch.errors import AutoresearchError
from autoresearch.proposers.base import Proposal
from autoresearch.target import (
    Constraint,
    build_context,
    changed_fixed_files,
    fixed_files,
    lab_target,
    load_target,
    proposal_files,
    read_edit_files,
    write_edit_files,
)

REPO_ROOT = Path(__file__).resolve().parent.parent
GOOD = """\
[target]
edit = ["bot.py"]
run = "python evaluate.py"
metric = "avg_score"
direction = "max"
timeout = 150
require = ["correct: True"]
context = ["game.py", "evaluate.py"]
"""


@pytest.fixture
def repo(tmp_repo) -> Path:
    root = Path(tmp_repo.working_tree_dir)
    (root / "bot.py").write_text("DEPTH = 3\n")
    (root / "game.py").write_text("SIZE = 4\n")
    (root / "evaluate.py").write_text("print('avg_score: 1.0')\nprint('correct: True')\n")
    (root / "lib").mkdir()
    (root / "lib" / "a.py").write_text("A = 1\n")
    (root / "lib" / "b.py").write_text("B = 2\n")
    return root


def write(root: Path, text: str) -> None:
    (root / "autoresearch.toml").write_text(text)


def test_no_file_means_no_declared_target(repo):
    assert load_target(repo) is None


def test_the_issues_example_loads_with_every_key(repo):
    write(repo, GOOD)
    t = load_target(repo)
    assert t.edit == ("bot.py",) and t.run == "python evaluate.py" and t.metric == "avg_score"
    assert t.direction == "max" and t.higher_is_better and t.timeout == 150.0
    assert t.require == ("correct: True",) and t.context == ("game.py", "evaluate.py")
    assert t.argv() == ["/bin/sh", "-c", "python evaluate.py"] and not t.lab


def test_defaults_and_optional_keys(repo):
    write(repo, """[target]
edit = "bot.py"
run = "python evaluate.py"
metric = "avg_score"
direction = "min"
budget = 20
min_delta = 0.5
prepare = "python game.py"
secondary = ["seconds"]
constraints = ["peak_mb <= 1024", "seconds<3"]
audit = "python evaluate.py --seeds 100"
network = true
""")
    t = load_target(repo)
    assert t.timeout == 600.0 and t.require == () and t.context == ()
    assert t.budget == "one experiment should take about 20 s" and t.min_delta == 0.5
    assert t.constraints == (Constraint("peak_mb", "<=", 1024.0), Constraint("seconds", "<", 3.0))
    assert t.secondary == ("seconds",) and t.network and t.audit.startswith("python evaluate.py")
    assert "lower is better" in t.describe() and "peak_mb <= 1024" in t.describe()


def test_globs_expand_to_sorted_files(repo):
    write(repo, GOOD.replace('edit = ["bot.py"]', 'edit = ["lib/*.py", "bot.py"]'))
    assert load_target(repo).edit == ("bot.py", "lib/a.py", "lib/b.py")


@pytest.mark.parametrize("change, words", [
    (("metric = \"avg_score\"\n", ""), "needs `metric`"),
    (("direction = \"max\"", "direction = \"up\""), 'direction must be "max" or "min"'),
    (("timeout = 150", "timeout = 150\ncolour = \"red\""), "unknown key 'colour'"),
    (('edit = ["bot.py"]', 'edit = ["robot.py"]'), "matches no file"),
    (('context = ["game.py", "evaluate.py"]', 'context = ["bot.py"]'), "both in edit and context"),
    (('run = "python evaluate.py"', 'run = "no-such-program-xyz --fast"'), "not found on PATH"),
    (('run = "python evaluate.py"', 'run = "python missing.py"'), "missing.py, which does not exist"),
    (('run = "python evaluate.py"', 'run = "./run.sh"'), "./run.sh not found"),
    (("timeout = 150", "timeout = -1"), "timeout must be a positive number"),
    (("timeout = 150", "timeout = \"long\""), "timeout must be a number"),
    (('edit = ["bot.py"]', 'edit = ["../bot.py"]'), "leaves the repository"),
    (('context = ["game.py", "evaluate.py"]', 'context = ["nope.py"]'), "context file nope.py does not exist"),
    (('require = ["correct: True"]', 'constraints = ["peak_mb about 1024"]'), "is not `name <op> number`"),
    (("[target]", "[targets]"), "unknown table or key 'targets'"),
    (("timeout = 150", "timeout = 150\n[extra]"), "unknown table or key 'extra'"),
    (('metric = "avg_score"', 'metric = "avg score"'), "is not a metric name"),
    (("direction", "direction = = "), "not valid TOML"),
])
def test_bad_input_is_one_line_naming_the_fix(repo, change, words):
    old, new = change
    assert old in GOOD
    write(repo, GOOD.replace(old, new, 1))
    with pytest.raises(AutoresearchError) as err:
        load_target(repo)
    message = str(err.value)
    assert words in message and "\n" not in message


def test_missing_table_names_the_keys(repo):
    write(repo, "# nothing yet\n")
    with pytest.raises(AutoresearchError, match=r"no \[target\] table; add one with edit, run, metric, direction"):
        load_target(repo)


def test_fixed_files_are_every_tracked_file_outside_edit(repo, tmp_repo):
    write(repo, GOOD)
    tmp_repo.git.add(A=True)
    tmp_repo.index.commit("program")
    t = load_target(repo)
    assert fixed_files(t, repo) == ["autoresearch.toml", "evaluate.py", "game.py", "lib/a.py", "lib/b.py"]


def test_changed_fixed_files_names_what_a_run_touched_outside_edit(repo, tmp_repo):
    write(repo, GOOD)
    tmp_repo.git.add(A=True)
    tmp_repo.index.commit("program")
    t = load_target(repo)
    (repo / "bot.py").write_text("DEPTH = 4\n")  # an edit file: allowed
    (repo / "scratch.txt").write_text("new, untracked\n")  # not a fixed file
    assert changed_fixed_files(t, repo) == []
    (repo / "evaluate.py").write_text("print('avg_score: 1e9')\n")
    (repo / "lib" / "b.py").unlink()
    assert changed_fixed_files(t, repo) == ["evaluate.py", "lib/b.py"]


def test_the_lab_as_a_target():
    t = lab_target(timeout=720.0)
    assert t.lab and t.edit == ("train.py",) and t.metric == "val_bpb" and t.direction == "min"
    assert t.run == "python train.py" and t.argv()[1:] == ["train.py"] and t.timeout == 720.0
    assert fixed_files(t, REPO_ROOT) == ["prepare.py"]


def test_lab_context_is_the_one_the_loop_always_built(tmp_path):
    t = lab_target()
    ctx = build_context(t, REPO_ROOT, program="p", history=[], experiment=1, profile="cpu")
    assert ctx.train_py == (REPO_ROOT / "train.py").read_text() and ctx.files == {"train.py": ctx.train_py}
    assert "evaluate_bpb" in ctx.lab_contract and ctx.context_files == {} and ctx.target.lab


def test_declared_context_holds_edit_and_context_files(repo):
    write(repo, GOOD)
    t = load_target(repo)
    ctx = build_context(t, repo, program="go", history=[], experiment=4)
    assert ctx.files == {"bot.py": "DEPTH = 3\n"} and ctx.train_py == ""
    assert set(ctx.context_files) == {"game.py", "evaluate.py"} and ctx.lab_contract == ""
    assert ctx.target.metric == "avg_score" and ctx.target.direction == "max" and not ctx.target.lab
    assert "correct: True" in ctx.target.description


def test_proposal_files_are_written_and_nothing_else(repo):
    write(repo, GOOD.replace('edit = ["bot.py"]', 'edit = ["bot.py", "lib/*.py"]'))
    t = load_target(repo)
    proposal = Proposal("h", "d", files={"lib/a.py": "A = 2\n"})
    assert write_edit_files(repo, proposal_files(t, proposal), t) == ["lib/a.py"]
    assert read_edit_files(t, repo)["lib/a.py"] == "A = 2\n"
    with pytest.raises(AutoresearchError, match="game.py, which is not an edit file"):
        proposal_files(t, Proposal("h", "d", files={"game.py": "SIZE = 9\n"}))


def test_proposal_keeps_train_py_and_files_consistent():
    p = Proposal("h", "d", "A = 1\n")
    assert p.files == {"train.py": "A = 1\n"}
    p.train_py = "A = 2\n"
    assert p.files == {"train.py": "A = 2\n"}
    p.files = {"train.py": "A = 3\n", "x.py": ""}
    assert p.train_py == "A = 3\n"
    q = Proposal("h", "d", files={"bot.py": "X = 1\n"})
    assert q.train_py == "" and q.files == {"bot.py": "X = 1\n"}


def test_a_metric_named_like_a_results_column_is_refused_in_one_line(tmp_path):
    from autoresearch.errors import AutoresearchError
    from autoresearch.target import parse_target

    (tmp_path / "p.py").write_text("X = 1\n")
    table = {"target": {"edit": ["p.py"], "run": "true", "metric": "delta", "direction": "max"}}
    with pytest.raises(AutoresearchError, match="'delta' is also the name of a results.tsv column"):
        parse_target(table, tmp_path, check_commands=False)


def test_a_crashed_baseline_says_where_to_look_and_how_to_go_on():
    from pathlib import Path

    from autoresearch.trials import baseline_crashed

    log = Path("results/t/runs/0000/run.trial2.log")
    audit = baseline_crashed("audit: `python a.py` exited 1: boom", log, "t", declared=True)
    assert "see results/t/runs/0000/audit.log" in audit and "new --tag" in audit and "--resume" in audit
    lab = baseline_crashed("exit 1: oops", log, "t", declared=False)
    assert "see results/t/runs/0000/run.trial2.log, fix the lab" in lab
