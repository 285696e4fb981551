#!/usr/bin/env bash
# The GPU path proved in one call, offline, on one NVIDIA GPU:
#
#   bash bench/gpu_check.sh          # smoke: estimated 5-7 minutes on one H100 (not yet timed on a GPU)
#   bash bench/gpu_check.sh full     # full: estimated 15-17 minutes (a 300 s baseline, a run of 2 x 60 s
#                                    # experiments with two baseline trials and an audit)
#
# Both: a climbmix-shaped corpus made offline (bench/gpu_check.py corpus: a parquet with a `text`
# column), prepared with `prepare.py --from-parquet` into a scratch cache; then
# `autoresearch run --proposer hparam` in a scratch git repo holding a copy of the lab, so no
# checkout or branch of yours is touched, with --timeout large enough for a cold compile cache.
#   smoke  the run only: --max-experiments 2 --time-budget 30 --baseline-repeats 1 --keep-rule
#          greedy, and 4 x 524288 eval tokens (the baseline, one experiment, the audit of a keep)
#   full   first the gpu profile's baseline `python train.py` for its whole 300 s budget and eval
#          (the number to hold beside upstream's: steps, MFU, memory), then the run with
#          --max-experiments 2 --time-budget 60
# Then a table from the logs (val_bpb, steps, tokens, MFU, peak memory, startup/eval/compile
# seconds), every failed step's log and every crashed row's reason verbatim. The corpus is made
# offline, so val_bpb here is not comparable with upstream's 0.9979; the table says so.
#
# Before anything runs: missing Python packages are installed (pip install -e .); a C compiler and
# Python's headers (triton compiles its launcher with them) are installed with apt-get when run as
# root, else named; torch must see the GPU (python -m autoresearch.gpus). What is missing is said
# in one line, and the check exits 1 without running anything. Only a machine with no GPU at all
# falls back to the cpu profile and its budgets (smoke: 113 s measured on 2 shared cores). Exit 0: every step worked.
#
#   GPU_CHECK_BUDGET=3 GPU_CHECK_RUN_BUDGET=2 GPU_CHECK_CORPUS_MB=1 bash bench/gpu_check.sh full   # quick
#
# Knobs: GPU_CHECK_PROFILE (gpu|cpu: skip the GPU detection), GPU_CHECK_BUDGET (full's baseline
# seconds; default the profile's TIME_BUDGET), GPU_CHECK_RUN_BUDGET (seconds per run experiment),
# GPU_CHECK_EXPERIMENTS (--max-experiments, 2), GPU_CHECK_CORPUS_MB (gpu 40, cpu 4), GPU_CHECK_TIMEOUT
# (seconds per training; default budget + 900), GPU_CHECK_INSTALL (0: install nothing),
# GPU_CHECK_DIR (scratch folder; default a new temporary one), PYTHON (default python3).
set -uo pipefail

MODE=${1:-smoke}
if [[ $MODE != smoke && $MODE != full ]]; then
  echo "gpu_check: unknown mode '$MODE': use smoke (default) or full" >&2
  exit 2
fi
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PY=${PYTHON:-python3}
export PYTHONPATH="$HERE${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
INSTALL=${GPU_CHECK_INSTALL:-1}
T0=$SECONDS
failed=0

# -- what the check needs, before anything runs -------------------------------------------------

missing_modules=$("$PY" -c "import importlib.util as u; print(' '.join(m for m in ('torch', 'numpy', 'tiktoken',
  'rustbpe', 'pyarrow', 'git', 'typer', 'rich', 'psutil', 'optuna', 'requests') if u.find_spec(m) is None))" 2>&1) ||
  { echo "gpu_check: cannot run $PY: $missing_modules"; exit 1; }
if [[ -n $missing_modules ]]; then
  if [[ $INSTALL == 0 ]]; then
    echo "gpu_check: missing Python packages: $missing_modules (pip install -e $HERE)"
    exit 1
  fi
  echo "gpu_check: installing the missing Python packages ($missing_modules): pip install -e $HERE"
  "$PY" -m pip install -q -e "$HERE" >"${TMPDIR:-/tmp}/gpu-check-pip.log" 2>&1 ||
    { echo "gpu_check: pip install -e $HERE failed (missing: $missing_modules); see ${TMPDIR:-/tmp}/gpu-check-pip.log"; exit 1; }
fi

have_cc() { [[ -n ${CC:-} ]] || command -v gcc >/dev/null || command -v clang >/dev/null; }
have_headers() {
  "$PY" -c "import os, sys, sysconfig; sys.exit(not os.path.exists(os.path.join(sysconfig.get_paths()['include'], 'Python.h')))"
}
pyver=$("$PY" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')

if [[ -n "${GPU_CHECK_PROFILE:-}" ]]; then
  PROFILE=$GPU_CHECK_PROFILE
else
  gpu_line=$("$PY" -m autoresearch.gpus)
  gpu_state=$?
  if [[ $gpu_state == 2 ]]; then
    PROFILE=cpu
    gpu_line=${gpu_line#gpu: }
    echo "gpu_check: no GPU on this machine: falling back to the cpu profile and its budgets (${gpu_line%%; fix: *})"
  else
    PROFILE=gpu
    problems=()
    [[ $gpu_state == 0 ]] || problems+=("${gpu_line#gpu: }")
    if [[ $INSTALL != 0 && $(id -u) == 0 ]] && command -v apt-get >/dev/null && ! { have_cc && have_headers; }; then
      echo "gpu_check: installing a C compiler and Python's headers for triton (apt-get install gcc python$pyver-dev)"
      apt-get update -qq >/dev/null 2>&1
      apt-get install -y -qq gcc >/dev/null 2>&1
      apt-get install -y -qq "python$pyver-dev" >/dev/null 2>&1 || apt-get install -y -qq python3-dev >/dev/null 2>&1
    fi
    have_cc || problems+=("no C compiler (gcc or clang; triton compiles its launcher with it): apt-get install gcc")
    have_headers || problems+=("no Python.h for $PY (triton compiles against it): apt-get install python$pyver-dev")
    if ((${#problems[@]})); then
      line=$(printf '%s; ' "${problems[@]}")
      echo "gpu_check: cannot run the gpu profile here: ${line%; }"
      exit 1
    fi
    echo "gpu_check: ${gpu_line}"
  fi
fi

# -- the check ------------------------------------------------------------------------------------

WORK=${GPU_CHECK_DIR:-$(mktemp -d "${TMPDIR:-/tmp}/gpu-check-XXXXXX")}
mkdir -p "$WORK"
if [[ $PROFILE == gpu ]]; then default_budget=300 default_mb=40; else default_budget=120 default_mb=4; fi
if [[ $MODE == smoke ]]; then
  default_run=30 repeats=1 rule=greedy
  [[ $PROFILE == gpu ]] && export AUTORESEARCH_EVAL_TOKENS=${AUTORESEARCH_EVAL_TOKENS:-$((4 * 524288))}
else
  default_run=60 repeats=2 rule=noise
fi
BUDGET=${GPU_CHECK_BUDGET:-$default_budget}
RUN_BUDGET=${GPU_CHECK_RUN_BUDGET:-$default_run}
EXPERIMENTS=${GPU_CHECK_EXPERIMENTS:-2}
# a cold compile cache (inductor, triton, flex attention) costs minutes before the first step
TIMEOUT=${GPU_CHECK_TIMEOUT:-$((RUN_BUDGET + 900))}
export AUTORESEARCH_CACHE="$WORK/cache" AUTORESEARCH_PROFILE=$PROFILE AUTORESEARCH_SOURCE=gpucheck
if [[ $MODE == full ]]; then planned="baseline ${BUDGET}s, "; else planned=""; fi
echo "gpu_check: $MODE, profile $PROFILE, ${planned}run ${EXPERIMENTS} x ${RUN_BUDGET}s (timeout ${TIMEOUT}s), scratch $WORK"

# step NAME LOG CMD...: run CMD with its output in LOG; on failure print the log's end verbatim
step() {
  local name=$1 log=$2 t=$SECONDS
  shift 2
  if "$@" >"$log" 2>&1; then
    echo "gpu_check: $name ok in $((SECONDS - t))s"
  else
    local code=$?
    failed=1
    echo "gpu_check: $name FAILED (exit $code) after $((SECONDS - t))s; the end of $log:"
    tail -n 60 "$log" | sed 's/^/    /'
    return 1
  fi
}

step corpus "$WORK/corpus.log" "$PY" "$HERE/bench/gpu_check.py" corpus "$WORK/corpus.parquet" \
  --mb "${GPU_CHECK_CORPUS_MB:-$default_mb}" &&
step prepare "$WORK/prepare.log" "$PY" "$HERE/prepare.py" --profile "$PROFILE" \
  --from-parquet "$WORK/corpus.parquet" --name gpucheck
prepared=$?

if [[ $prepared == 0 ]]; then
  if [[ $MODE == full ]]; then
    (cd "$HERE" && step baseline "$WORK/baseline.log" timeout --kill-after=30 "$((BUDGET + 900))" \
      env AUTORESEARCH_TIME_BUDGET="$BUDGET" "$PY" train.py) || failed=1
  fi

  # a scratch repo with the lab's files: the run's branch and worktree live there
  lab="$WORK/lab"
  rm -rf "$lab" && mkdir -p "$lab"
  cp "$HERE/prepare.py" "$HERE/train.py" "$lab/"
  [[ -f "$HERE/program.md" ]] && cp "$HERE/program.md" "$lab/"
  git -C "$lab" init -q -b main &&
    git -C "$lab" -c user.name=gpu-check -c user.email=gpu-check@localhost add -A &&
    git -C "$lab" -c user.name=gpu-check -c user.email=gpu-check@localhost commit -qm "lab for gpu_check" &&
    git -C "$lab" config user.name gpu-check && git -C "$lab" config user.email gpu-check@localhost
  step run "$WORK/run.log" "$PY" -m autoresearch run --repo "$lab" --tag check --proposer hparam \
    --profile "$PROFILE" --max-experiments "$EXPERIMENTS" --time-budget "$RUN_BUDGET" --timeout "$TIMEOUT" \
    --baseline-repeats "$repeats" --keep-rule "$rule" || true
  # a crashed experiment is a row, not a failed command: show its log too
  for log in "$lab"/results/check/runs/*/run*.log; do
    [[ -f $log ]] || continue
    if ! grep -q '^val_bpb:' "$log"; then
      failed=1
      echo "gpu_check: ${log#"$lab"/} has no summary; its end:"
      tail -n 60 "$log" | sed 's/^/    /'
    fi
  done
fi

echo
baseline_args=()
[[ $MODE == full ]] && baseline_args=(--baseline "$WORK/baseline.log")
"$PY" "$HERE/bench/gpu_check.py" table "${baseline_args[@]}" --run "$WORK/lab/results/check" || failed=1
echo
took=$((SECONDS - T0))
echo "gpu_check: $MODE, $PROFILE profile, ${took}s in all; logs in $WORK"
if [[ $MODE == smoke && $PROFILE == gpu && $took -gt 480 ]]; then
  echo "gpu_check: the smoke mode took over 8 minutes (${took}s): see the startup_s and compile_s columns"
fi
exit $failed
