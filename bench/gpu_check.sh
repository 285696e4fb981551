#!/usr/bin/env bash
# The GPU path end to end, offline, in under 10 minutes on one H100/H200:
#   1. a climbmix-shaped corpus (bench/gpu_check.py corpus: a parquet with a `text` column),
#      prepared with `prepare.py --from-parquet` into a scratch cache;
#   2. the gpu profile's baseline, `python train.py`, for the full 300 s budget;
#   3. `autoresearch run --max-experiments 2 --time-budget 60` (hparam proposer) in a scratch git
#      repo holding a copy of the lab, so no checkout or branch of yours is touched;
#   4. a table (val_bpb, steps, tokens, MFU, peak memory, startup, eval and compile seconds) from
#      the logs, and every failure's log tail verbatim.
# Without CUDA it says so and falls back to the cpu profile and its budgets (120 s baseline):
# about 5 minutes on 2 cores. Exit status: 0 when every step worked.
#
#   bash bench/gpu_check.sh
#   GPU_CHECK_BUDGET=3 GPU_CHECK_RUN_BUDGET=2 GPU_CHECK_CORPUS_MB=1 bash bench/gpu_check.sh   # quick
#
# Knobs: GPU_CHECK_PROFILE (gpu|cpu; default: gpu when CUDA is visible), GPU_CHECK_BUDGET (baseline
# seconds; default the profile's TIME_BUDGET), GPU_CHECK_RUN_BUDGET (seconds per run experiment, 60),
# GPU_CHECK_EXPERIMENTS (--max-experiments, 2), GPU_CHECK_CORPUS_MB (gpu 40, cpu 4),
# GPU_CHECK_DIR (scratch folder; default a new temporary one), PYTHON (default python3).
set -uo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PY=${PYTHON:-python3}
WORK=${GPU_CHECK_DIR:-$(mktemp -d "${TMPDIR:-/tmp}/gpu-check-XXXXXX")}
mkdir -p "$WORK"
export PYTHONPATH="$HERE${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
T0=$SECONDS
failed=0

if [[ -n "${GPU_CHECK_PROFILE:-}" ]]; then
  PROFILE=$GPU_CHECK_PROFILE
elif "$PY" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  PROFILE=gpu
else
  PROFILE=cpu
  echo "gpu_check: no CUDA device visible: falling back to the cpu profile and its budgets"
fi
if [[ $PROFILE == gpu ]]; then default_budget=300 default_mb=40; else default_budget=120 default_mb=4; fi
BUDGET=${GPU_CHECK_BUDGET:-$default_budget}
RUN_BUDGET=${GPU_CHECK_RUN_BUDGET:-60}
EXPERIMENTS=${GPU_CHECK_EXPERIMENTS:-2}
export AUTORESEARCH_CACHE="$WORK/cache" AUTORESEARCH_PROFILE=$PROFILE AUTORESEARCH_SOURCE=gpucheck
echo "gpu_check: profile $PROFILE, baseline ${BUDGET}s, run ${EXPERIMENTS} x ${RUN_BUDGET}s, scratch $WORK"

# step NAME LOG CMD...: run CMD with its output in LOG; on failure print the log's tail verbatim
step() {
  local name=$1 log=$2 t=$SECONDS
  shift 2
  if "$@" >"$log" 2>&1; then
    echo "gpu_check: $name ok in $((SECONDS - t))s"
  else
    local code=$?
    failed=1
    echo "gpu_check: $name FAILED (exit $code) after $((SECONDS - t))s; the end of $log:"
    tail -n 40 "$log" | sed 's/^/    /'
    return 1
  fi
}

step corpus "$WORK/corpus.log" "$PY" "$HERE/bench/gpu_check.py" corpus "$WORK/corpus.parquet" \
  --mb "${GPU_CHECK_CORPUS_MB:-$default_mb}" &&
step prepare "$WORK/prepare.log" "$PY" "$HERE/prepare.py" --profile "$PROFILE" \
  --from-parquet "$WORK/corpus.parquet" --name gpucheck
prepared=$?

if [[ $prepared == 0 ]]; then
  (cd "$HERE" && step baseline "$WORK/baseline.log" env AUTORESEARCH_TIME_BUDGET="$BUDGET" "$PY" train.py) || failed=1

  # a scratch repo with the lab's three files: the run's branch and worktree live there
  lab="$WORK/lab"
  rm -rf "$lab" && mkdir -p "$lab"
  cp "$HERE/prepare.py" "$HERE/train.py" "$lab/"
  [[ -f "$HERE/program.md" ]] && cp "$HERE/program.md" "$lab/"
  git -C "$lab" init -q -b main &&
    git -C "$lab" -c user.name=gpu-check -c user.email=gpu-check@localhost add -A &&
    git -C "$lab" -c user.name=gpu-check -c user.email=gpu-check@localhost commit -qm "lab for gpu_check" &&
    git -C "$lab" config user.name gpu-check && git -C "$lab" config user.email gpu-check@localhost
  step run "$WORK/run.log" "$PY" -m autoresearch run --repo "$lab" --tag check --proposer hparam \
    --profile "$PROFILE" --max-experiments "$EXPERIMENTS" --time-budget "$RUN_BUDGET" || true
  # a crashed experiment is a row, not a failed command: show its log too
  for log in "$lab"/results/check/runs/*/run.log; do
    [[ -f $log ]] || continue
    if ! grep -q '^val_bpb:' "$log"; then
      failed=1
      echo "gpu_check: ${log#"$lab"/} has no summary; its end:"
      tail -n 40 "$log" | sed 's/^/    /'
    fi
  done
fi

echo
"$PY" "$HERE/bench/gpu_check.py" table --baseline "$WORK/baseline.log" --run "$WORK/lab/results/check"
echo
echo "gpu_check: $PROFILE profile, $((SECONDS - T0))s in all; logs in $WORK"
exit $failed
