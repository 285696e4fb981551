"""Stand-in coding agent for `--proposer command`: applies the next step of a JSON script.

The script (a list in the file named by STANDIN_SCRIPT) holds one step per call: constants to
set in train.py ({"VAL": 0.99}), or {"sleep": S} to hang, or {"exit": N} to fail. With
"claude_cost": USD in a step, the agent answers as `claude -p --output-format json` does: one
result object with that total_cost_usd (an error result when it fails). The agent writes its pid
to STANDIN_SCRIPT + ".pid" first, so a test can see that it is running.
"""

import fcntl
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from standin import set_constants  # noqa: E402

script = Path(os.environ["STANDIN_SCRIPT"])
Path(f"{script}.pid").write_text(str(os.getpid()))
with open(f"{script}.lock", "w") as lock:  # agents of several workers take steps at once
    fcntl.flock(lock, fcntl.LOCK_EX)
    steps = json.loads(script.read_text())
    step = steps.pop(0) if steps else {"exit": 3}
    script.write_text(json.dumps(steps))
sys.stdin.read()
claude_cost = step.pop("claude_cost", None)


def say(text: str, failed: bool = False) -> None:
    if claude_cost is None:
        print(text)
        return
    usage = {"input_tokens": 12, "cache_creation_input_tokens": 3000, "cache_read_input_tokens": 20000,
             "output_tokens": 800}
    result = {"type": "result", "subtype": "error_max_turns" if failed else "success", "is_error": failed,
              "num_turns": 3, "duration_ms": 900, "total_cost_usd": claude_cost, "usage": usage}
    if not failed:
        result["result"] = text
    print(json.dumps(result))


if "sleep" in step:
    time.sleep(step.pop("sleep"))
if "exit" in step:
    say("stand-in agent: failing on purpose", failed=True)
    sys.exit(step["exit"])
train = Path("train.py")
train.write_text(set_constants(train.read_text(), **step))
change = ", ".join(f"{k} {v}" for k, v in step.items())
Path(os.environ["AUTORESEARCH_DESCRIPTION_FILE"]).write_text(f"set {change}\n")
say(f"HYPOTHESIS: {change} should help")
