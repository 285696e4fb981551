#!/usr/bin/env bash
# OpenAI Codex CLI as the autoresearch proposer: one fresh `codex exec` per experiment.
#
#   autoresearch run --tag nov22 --proposer command --command harness/codex.sh [--model gpt-5.5]
#
# autoresearch runs this in the run's worktree with the prompt on stdin (and in
# $AUTORESEARCH_PROMPT_FILE). `codex exec` never asks for approval; the workspace-write sandbox
# lets it edit files in the worktree (the prompt tells it to edit only train.py, or a declared
# target's edit files; autoresearch refuses a change to any other file). Needs Codex installed and logged in (or
# CODEX_API_KEY / OPENAI_API_KEY set). Environment knobs: AUTORESEARCH_MODEL (set by --model;
# without it Codex uses its configured default and the cost cannot be priced),
# CODEX_EXTRA_ARGS (appended as-is, e.g. "-c model_reasoning_effort=high").
set -euo pipefail

: "${AUTORESEARCH_PROMPT_FILE:?run me through: autoresearch run --proposer command --command harness/codex.sh}"

args=(
  exec
  --json                      # JSONL events on stdout: agent messages, per-thread token usage
  --sandbox workspace-write   # may write in the working directory (and /tmp), nothing else
  --skip-git-repo-check       # the worktree is a git checkout, but do not depend on it
  --ephemeral                 # no session files: every experiment starts fresh
  --color never
)
if [[ -n "${AUTORESEARCH_MODEL:-}" ]]; then
  args+=(--model "$AUTORESEARCH_MODEL")
fi
# shellcheck disable=SC2206  # word splitting of the extra args is the point
args+=(${CODEX_EXTRA_ARGS:-})

# "-" reads the prompt from stdin. The final agent message (an item.completed event) ends with
# the HYPOTHESIS:/DESCRIPTION: lines autoresearch reads; turn.completed gives the token counts,
# which autoresearch prices by --model (Codex reports no price).
exec codex "${args[@]}" - < "$AUTORESEARCH_PROMPT_FILE"
