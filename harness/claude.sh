#!/usr/bin/env bash
# Claude Code as the autoresearch proposer: one fresh, non-interactive `claude -p` per experiment.
#
#   autoresearch run --tag nov22 --proposer command --command harness/claude.sh [--model claude-opus-5-5]
#
# autoresearch runs this in the run's worktree with the prompt on stdin (and in
# $AUTORESEARCH_PROMPT_FILE). Claude may read files and edit ./train.py (a declared target: the
# edit files of autoresearch.toml, from $AUTORESEARCH_EDIT_FILES), nothing else: no shell, no
# web, no other file. Needs Claude Code installed and logged in (or ANTHROPIC_API_KEY set).
# Environment knobs: AUTORESEARCH_MODEL (set by --model), CLAUDE_MAX_TURNS (default 30),
# CLAUDE_EXTRA_ARGS (appended as-is, e.g. "--max-budget-usd 2").
set -euo pipefail

: "${AUTORESEARCH_PROMPT_FILE:?run me through: autoresearch run --proposer command --command harness/claude.sh}"

args=(
  -p                                     # print mode: answer once and exit, no TUI
  --output-format json                   # one final JSON result: text, tokens, total_cost_usd
  --no-session-persistence               # no transcript on disk per call (a night makes hundreds)
  --permission-mode dontAsk              # never wait for approval: deny whatever is not allowed below
  --tools "Read,Edit"                    # the only built-in tools it gets
  --max-turns "${CLAUDE_MAX_TURNS:-30}"  # stop a runaway session
  --allowedTools "Read"
)
# One Edit permission per file it may change (autoresearch sets the list; train.py in the lab).
while IFS= read -r file; do
  [[ -n "$file" ]] && args+=("Edit(./$file)")
done <<< "${AUTORESEARCH_EDIT_FILES:-train.py}"
if [[ -n "${AUTORESEARCH_MODEL:-}" ]]; then
  args+=(--model "$AUTORESEARCH_MODEL")
fi
# shellcheck disable=SC2206  # word splitting of the extra args is the point
args+=(${CLAUDE_EXTRA_ARGS:-})

# The prompt goes on stdin; its last lines ask for HYPOTHESIS:/DESCRIPTION: lines. They end up
# in the JSON result's "result" field, where autoresearch reads them, and its cost and tokens.
exec claude "${args[@]}" < "$AUTORESEARCH_PROMPT_FILE"
