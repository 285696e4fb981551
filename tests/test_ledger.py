"""The Ledger on real files: grouping trials into experiments, the one definition of the best,
numbers that two processes can never share, and old results.tsv files that still resume."""

import subprocess
import sys
import textwrap

import pytest

from autoresearch.errors import AutoresearchError
from autoresearch.ledger import Ledger
from autoresearch.records import COLUMNS, HEADER, Row
from conftest import REPO_ROOT


def row(n: int, status: str, val: float, commit: str = "c0", trial: int = 1, **kw) -> Row:
    return Row(commit=commit, val_bpb=val, memory_gb=1.0, status=status, description=f"e{n}",
               experiment=n, trial=trial, **kw)


def test_trials_group_into_experiments_and_the_best_is_the_latest_keep(tmp_path):
    ledger = Ledger(tmp_path)
    for r in [row(0, "trial", 1.000, "base"), row(0, "keep", 1.002, "base", 2),
              row(1, "discard", 1.01, "aaa"),
              row(2, "trial", 0.997, "bbb"), row(2, "keep", 0.995, "bbb", 2),
              row(3, "crash", 0.0, "ccc")]:
        ledger.append(r)
    experiments = ledger.experiments()
    assert [e.number for e in experiments] == [0, 1, 2, 3]
    assert experiments[0].values == [1.0, 1.002] and experiments[3].values == []
    best = ledger.best("base")
    assert best.commit == "bbb" and best.experiment == 2 and best.mean == pytest.approx(0.996)
    noise = ledger.noise()  # two pairs, each 0.002 apart
    assert noise.dof == 2 and noise.sigma == pytest.approx(0.002 / 2**0.5)
    assert ledger.undecided() == []
    history = ledger.history()
    assert [h["experiment"] for h in history] == [0, 1, 2, 3]
    assert history[2]["val_bpb"] == pytest.approx(0.996) and history[2]["trials"] == 2


def test_an_experiment_without_its_verdict_is_pending(tmp_path):
    ledger = Ledger(tmp_path)
    ledger.append(row(0, "keep", 1.0, "base"))
    ledger.append(row(1, "trial", 0.999, "aaa"))
    [pending] = ledger.undecided()
    assert pending.number == 1 and pending.commit == "aaa" and not pending.decided
    assert ledger.best("base").commit == "base"  # a trial waiting for its confirm is never the best


def test_before_any_keep_the_best_is_the_base_commit(tmp_path):
    best = Ledger(tmp_path).best("base123")
    assert best.commit == "base123" and best.experiment is None and best.mean is None


def test_numbers_are_never_reused_across_sessions(tmp_path):
    ledger = Ledger(tmp_path)
    ledger.open()
    assert [ledger.new_number() for _ in range(3)] == [0, 1, 2]
    ledger.append(row(0, "keep", 1.0))
    ledger.open()  # a new session: numbers handed out but never recorded stay unused
    assert ledger.new_number() == 3
    ledger.append(row(7, "keep", 1.0))  # a row naming a number past the counter (an older file)
    ledger.open()
    assert ledger.new_number() == 8


NUMBERS = textwrap.dedent("""
    import sys
    from pathlib import Path
    from autoresearch.ledger import Ledger
    ledger = Ledger(Path(sys.argv[1]))
    print(" ".join(str(ledger.new_number()) for _ in range(int(sys.argv[2]))))
""")


def test_two_processes_asking_for_numbers_never_collide(tmp_path):
    procs = [subprocess.Popen([sys.executable, "-c", NUMBERS, str(tmp_path), "60"], cwd=REPO_ROOT,
                              stdout=subprocess.PIPE, text=True) for _ in range(2)]
    taken = [int(n) for p in procs for n in p.communicate(timeout=120)[0].split()]
    assert all(p.returncode == 0 for p in procs)
    assert sorted(taken) == list(range(120))


def test_an_older_header_is_upgraded_in_place_and_resumes(tmp_path):
    old_columns = COLUMNS[:20]  # schema 1: before trials had their own columns
    path = tmp_path / "results.tsv"
    lines = ["\t".join(old_columns)]
    for n, status, val in [(0, "keep", "1.000000"), (1, "discard", "1.010000")]:
        values = dict.fromkeys(old_columns, "")
        values.update(commit=f"c{n}", val_bpb=val, memory_gb="1.0", status=status, description=f"e{n}",
                      experiment=str(n), input_tokens="0", output_tokens="0", cost_usd="0.000000")
        lines.append("\t".join(values[c] for c in old_columns))
    path.write_text("\n".join(lines) + "\n")
    ledger = Ledger(tmp_path)
    ledger.open()
    text = path.read_text()
    assert text.startswith(HEADER) and text.count("\n") == 3
    assert [r.experiment for r in ledger.rows()] == [0, 1] and ledger.rows()[0].role == ""
    assert ledger.new_number() == 2
    ledger.append(row(2, "keep", 0.99, "c2", role="candidate"))
    assert ledger.best("c0").commit == "c2"


def test_a_foreign_header_is_refused_in_one_line(tmp_path):
    (tmp_path / "results.tsv").write_text("commit\tval_bpb\tmemory_gb\tstatus\tdescription\tgpu\n")
    with pytest.raises(AutoresearchError, match="different header; move it away"):
        Ledger(tmp_path).open()
