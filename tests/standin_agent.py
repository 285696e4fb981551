"""Stand-in coding agent for `--proposer command`: applies the next step of a JSON script.

The script (a list in the file named by STANDIN_SCRIPT) holds one step per call: constants to
set in train.py ({"VAL": 0.99}), or {"sleep": S} to hang, or {"exit": N} to fail. The agent
writes its pid to STANDIN_SCRIPT + ".pid" first, so a test can see that it is running.
"""

import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from standin import set_constants  # noqa: E402

script = Path(os.environ["STANDIN_SCRIPT"])
Path(f"{script}.pid").write_text(str(os.getpid()))
steps = json.loads(script.read_text())
step = steps.pop(0) if steps else {"exit": 3}
script.write_text(json.dumps(steps))
sys.stdin.read()
if "sleep" in step:
    time.sleep(step.pop("sleep"))
if "exit" in step:
    print("stand-in agent: failing on purpose")
    sys.exit(step["exit"])
train = Path("train.py")
train.write_text(set_constants(train.read_text(), **step))
change = ", ".join(f"{k} {v}" for k, v in step.items())
Path(os.environ["AUTORESEARCH_DESCRIPTION_FILE"]).write_text(f"set {change}\n")
print(f"HYPOTHESIS: {change} should help")
