"""Two supervised trainings at once in one harness (speculation runs an agent beside training;
--workers runs several trainings): ending one must not touch the other's processes."""

import sys
import textwrap
import threading
from pathlib import Path

import psutil

from autoresearch.runner import run_training, training_env

# Starts a child that works for a while and reports; the parent waits for it, then prints a
# summary. If the other training's clean-up killed this child, the summary never comes.
SLOW = textwrap.dedent('''\
    import subprocess, sys
    child = subprocess.run([sys.executable, "-c", "import time; time.sleep(1.5); print('child done')"],
                           capture_output=True, text=True)
    print(child.stdout.strip(), child.returncode)
    print("---")
    print("val_bpb: 0.990000")
''')
FAST = textwrap.dedent('''\
    import subprocess, sys
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])  # left behind on purpose
    open("child.pid", "w").write(str(child.pid))
    print("---")
    print("val_bpb: 1.000000")
''')


def test_two_trainings_in_two_threads_do_not_interfere(tmp_path):
    results = {}

    def train(name: str, script: str):
        folder = tmp_path / name
        folder.mkdir()
        (folder / "train.py").write_text(script)
        results[name] = run_training(folder, folder / "run.log", 60, training_env({"PATH": "/usr/bin:/bin"}),
                                     command=[sys.executable, "train.py"], pid_file=folder / "training.json")

    threads = [threading.Thread(target=train, args=("slow", SLOW)), threading.Thread(target=train, args=("fast", FAST))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    slow, fast = results["slow"], results["fast"]
    assert (fast.status, fast.metrics["val_bpb"]) == ("ok", 1.0)
    leftover = int((tmp_path / "fast/child.pid").read_text())  # its own leftover child: killed
    assert not psutil.pid_exists(leftover) or psutil.Process(leftover).status() == psutil.STATUS_ZOMBIE
    assert (slow.status, slow.metrics["val_bpb"]) == ("ok", 0.99), Path(slow.log_path).read_text()
    assert "child done 0" in Path(slow.log_path).read_text()  # its child lived while the fast one ended
    assert not (tmp_path / "slow/training.json").exists() and not (tmp_path / "fast/training.json").exists()
