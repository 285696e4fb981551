"""Stand-in `claude` / `codex` CLI: records how it was called, edits train.py, prints a report.

Which CLI it plays: $FAKE_AGENT ("claude" or "codex"). What happens: $FAKE_AGENT_SCENARIO:
  ok        edit train.py, print the CLI's real machine-readable report (Claude: the final
            `--output-format json` result object; Codex: the `--json` JSONL event stream)
  error     Claude: an error_max_turns result; Codex: reconnect errors, then turn.failed; exit 1
  api_error Claude only: an API error, which Claude reports as subtype success with is_error
  hang      start as the CLI does (Codex: its first events), then sleep until killed
  garbage   edit train.py, print prose, a truncated JSON line and stray braces; exit 0
The call (argv and stdin) is written as JSON to $FAKE_AGENT_LOG when that is set. The outputs
follow the CLIs' documented formats field for field (Claude Code's result message; codex-rs
exec_events.rs), with made-up ids and numbers.
"""

import json
import os
import sys
import time
from pathlib import Path

AGENT = os.environ.get("FAKE_AGENT", "claude")
SCENARIO = os.environ.get("FAKE_AGENT_SCENARIO", "ok")
FINAL = ("I raised the Muon learning rate a little: train.py now sets MATRIX_LR = 0.045.\n\n"
         "HYPOTHESIS: a slightly higher Muon LR converges faster within the 5-minute budget\n"
         "DESCRIPTION: MATRIX_LR 0.04 -> 0.045")
SESSION = "5f0c2a7e-3d41-4b8e-9a55-0c1f6e2b7d90"


def claude_usage(fresh, written, read, out):
    return {"input_tokens": fresh, "cache_creation_input_tokens": written, "cache_read_input_tokens": read,
            "output_tokens": out, "server_tool_use": {"web_search_requests": 0, "web_fetch_requests": 0},
            "service_tier": "standard",
            "cache_creation": {"ephemeral_1h_input_tokens": 0, "ephemeral_5m_input_tokens": written}}


def model_usage(fresh, written, read, out, cost):
    return {"inputTokens": fresh, "outputTokens": out, "cacheReadInputTokens": read,
            "cacheCreationInputTokens": written, "webSearchRequests": 0, "costUSD": cost,
            "contextWindow": 200000, "maxOutputTokens": 64000}


def claude_result(subtype, is_error, turns, cost, text=None, stop="end_turn"):
    result = {"type": "result", "subtype": subtype, "is_error": is_error, "duration_ms": 48213,
              "duration_api_ms": 45877, "num_turns": turns}
    if text is not None:  # error_* results carry no final text
        result["result"] = text
    result.update({
        "stop_reason": stop, "session_id": SESSION, "total_cost_usd": cost,
        "usage": claude_usage(14, 18342, 96120, 1873),
        "modelUsage": {
            "claude-sonnet-4-5-20250929": model_usage(14, 18342, 96120, 1873, round(cost - 0.0039235, 7)),
            "claude-haiku-4-5-20251001": model_usage(2011, 0, 0, 97, 0.0039235),
        },
        "permission_denials": [], "uuid": "b7e9d0c4-6a1f-4f0e-8c3b-2d5a9e7f1c20",
    })
    if subtype.startswith("error_"):
        result["errors"] = []
    return json.dumps(result)  # one line, as `claude -p --output-format json` prints it


def codex_event(kind, **fields):
    return json.dumps({"type": kind, **fields})


def codex_start():
    print(codex_event("thread.started", thread_id="0199a213-81c0-7800-8aa1-bbab2a035a53"), flush=True)
    print(codex_event("turn.started"), flush=True)
    print(codex_event("item.completed", item={"id": "item_0", "type": "reasoning",
                                              "text": "**Reading train.py to find the learning rates**"}), flush=True)


def codex_work():
    cmd = "bash -lc 'sed -n 1,40p train.py'"
    print(codex_event("item.started", item={"id": "item_1", "type": "command_execution", "command": cmd,
                                            "aggregated_output": "", "exit_code": None, "status": "in_progress"}))
    # A command's output may quote anything; it is not the agent's answer.
    print(codex_event("item.completed", item={
        "id": "item_1", "type": "command_execution", "command": cmd,
        "aggregated_output": "MATRIX_LR = 0.04  # Muon LR\nDESCRIPTION: quoted from a file, not the answer\n",
        "exit_code": 0, "status": "completed"}))
    print(codex_event("item.completed", item={"id": "item_2", "type": "file_change", "status": "completed",
                                              "changes": [{"path": str(Path("train.py").resolve()), "kind": "update"}]}))


def edit_train():
    train = Path(os.environ.get("AUTORESEARCH_EDIT_FILES", "train.py").splitlines()[0])  # the first edit file
    train.write_text(train.read_text().replace("0.04", "0.045"))


def main():
    prompt = sys.stdin.read()
    if os.environ.get("FAKE_AGENT_LOG"):
        Path(os.environ["FAKE_AGENT_LOG"]).write_text(json.dumps({"args": sys.argv[1:], "stdin": prompt}))
    if SCENARIO == "hang":
        if AGENT == "codex":
            codex_start()
        time.sleep(300)
    if SCENARIO == "garbage":
        edit_train()
        print("Welcome! Loading...\n{\"type\": \"result\", \"subtype\": \"succ\n{ not json }\n}\n[1, 2\n"
              "HYPOTHESIS: garbage around me, but this line is plain text\nDESCRIPTION: survived the garbage")
        return 0
    if AGENT == "claude":
        if SCENARIO == "ok":
            edit_train()
            print(claude_result("success", False, 7, 0.1841235, FINAL))
            return 0
        if SCENARIO == "error":
            edit_train()  # it got this far before running out of turns
            print(claude_result("error_max_turns", True, 31, 0.4123, stop="tool_use"))
            return 1
        if SCENARIO == "api_error":
            text = 'API Error: 529 {"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}'
            print(claude_result("success", True, 2, 0.0213, text, stop="stop_sequence"))
            return 1
    if AGENT == "codex":
        codex_start()
        if SCENARIO == "ok":
            print("2026-11-20T10:00:01.000000Z  WARN codex_core::exec: sandbox denied a network call", file=sys.stderr)
            codex_work()
            edit_train()
            print(codex_event("item.completed", item={"id": "item_3", "type": "agent_message", "text": FINAL}))
            print(codex_event("turn.completed", usage={"input_tokens": 48211, "cached_input_tokens": 40960,
                                                       "output_tokens": 2210}))
            return 0
        if SCENARIO == "error":
            for i in range(1, 3):
                print(codex_event("error", message=f"Reconnecting... {i}/5"))
            print(codex_event("turn.failed", error={"message": "stream disconnected before completion: "
                                                               "error sending request for url"}))
            return 1
    print(f"fake_agent_cli: no scenario {SCENARIO!r} for {AGENT}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
