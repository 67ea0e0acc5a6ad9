#!/usr/bin/env bash
# l2l-jax's speed on the first machine with an NVIDIA GPU: everything in one command, under one overall timeout
# (L2L_GPU_BUDGET seconds, default 570: fits a 10-minute slot, installation included).
#
#   bash benchmarks/gpu.sh                     (from anywhere; it works in the repository root)
#
# 1. Python: L2L_GPU_PYTHON if set (a python whose jax already sees the GPU, e.g. a machine without network:
#    then nothing is installed). Else the venv L2L_GPU_VENV (default .venv-gpu), made if missing with
#    jax[cuda12]==JAX_VERSION (default: the version the project is developed with, 0.10.2), PyTorch
#    (L2L_TORCH_SPEC, default torch==2.13.0: give a CPU wheel there to skip the CUDA build's download; PyTorch
#    only reads .pth files and runs the reference side of eval_speed) and the project (pip install -e .).
#    If the venv cannot be made (no network), a python3 whose jax sees a GPU is used instead, with a warning.
#    L2L_GPU_WHEELS=DIR: wheels (e.g. the project's dependencies that such a python lacks: grain,
#    ml_collections, tensorboardX) installed without index or dependencies into runs/gpu_site, put on PYTHONPATH.
# 2. machine_peak.py (matmul rate and bandwidth of the card, float32 HIGHEST, as the exact precision runs).
# 3. train_speed.py --skip_torch at batch 256 and 64 (bucket 512 only: one compile per run), and eval_speed.py
#    (the 1024-video ActivityNet-sized synthetic val set, with and without baselines), for each layout (dense,
#    chunk) and, where the script has --precision, each precision (exact, fast). Runs go most useful first;
#    when the budget is nearly spent the rest are skipped and listed. Compiled programs are cached in
#    runs/jax_cache, so a second run of this script spends its time measuring.
# Every line of output carries the card's name; the log is also written to runs/gpu_<date>.log.
# Never run in CI or by the tests.
set -uo pipefail
cd "$(dirname "$0")/.."

BUDGET=${L2L_GPU_BUDGET:-570}
if [ -z "${L2L_GPU_SH_INNER:-}" ]; then  # one overall timeout around everything below
  export L2L_GPU_SH_INNER=1 L2L_GPU_T0=$SECONDS
  mkdir -p runs
  LOG=runs/gpu_$(date +%Y%m%d_%H%M%S).log
  timeout --kill-after=10 "$BUDGET" bash "$0" "$@" 2>&1 | tee "$LOG"
  rc=${PIPESTATUS[0]}
  [ "$rc" = 124 ] && echo "gpu.sh: stopped by the overall timeout of ${BUDGET} s" | tee -a "$LOG"
  echo "log: $LOG"
  exit "$rc"
fi

START=$SECONDS
DEADLINE=$((START + BUDGET - 15))  # keep a few seconds for the summary
left() { echo $((DEADLINE - SECONDS)); }
CARD=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1)
CARD=${CARD:-"no nvidia-smi"}
say() { echo "[$CARD] $*"; }
SKIPPED=()

# ---- 1. python ----------------------------------------------------------------------------------------
gpu_ok() { "$1" -c 'import jax, sys; sys.exit(jax.default_backend() != "gpu")' >/dev/null 2>&1; }
JAX_VERSION=${JAX_VERSION:-0.10.2}
PY=${L2L_GPU_PYTHON:-}
if [ -z "$PY" ]; then
  VENV=${L2L_GPU_VENV:-.venv-gpu}
  if [ ! -x "$VENV/bin/python" ] || ! gpu_ok "$VENV/bin/python"; then
    say "making $VENV: jax[cuda12]==$JAX_VERSION, ${L2L_TORCH_SPEC:-torch==2.13.0}, the project"
    t0=$SECONDS
    if { [ -x "$VENV/bin/python" ] || "$(command -v python3.11 || command -v python3)" -m venv "$VENV"; } &&
       "$VENV/bin/pip" install -q "jax[cuda12]==$JAX_VERSION" &&
       "$VENV/bin/pip" install -q ${L2L_TORCH_SPEC:-torch==2.13.0} &&
       "$VENV/bin/pip" install -q -e .; then
      say "installed in $((SECONDS - t0)) s ($(du -sh "$VENV" | cut -f1))"
    else
      say "could not make $VENV (no network?)"
    fi
  fi
  if gpu_ok "$VENV/bin/python"; then
    PY=$VENV/bin/python
  elif gpu_ok python3; then
    PY=python3
    say "WARNING: using python3 ($(python3 -c 'import jax; print("jax", jax.__version__)'))" \
        "instead of jax $JAX_VERSION"
  else
    say "no python whose jax sees a GPU: set L2L_GPU_PYTHON"; exit 1
  fi
fi
gpu_ok "$PY" || { say "$PY: jax does not see a GPU"; exit 1; }
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
if [ -n "${L2L_GPU_WHEELS:-}" ]; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --upgrade --target runs/gpu_site \
    "$L2L_GPU_WHEELS"/*.whl || { say "could not install the wheels in $L2L_GPU_WHEELS"; exit 1; }
  export PYTHONPATH="$PYTHONPATH:$PWD/runs/gpu_site"
fi
export JAX_COMPILATION_CACHE_DIR=${JAX_COMPILATION_CACHE_DIR:-$PWD/runs/jax_cache}
"$PY" -c 'import l2l_jax' || { say "$PY cannot import l2l_jax (its dependencies?)"; exit 1; }
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null | sed "s/^/[$CARD] /"
"$PY" -c 'import jax, jaxlib; print("jax", jax.__version__, "jaxlib", jaxlib.__version__, jax.devices())' |
  sed "s/^/[$CARD] /"

# run NAME SECONDS_NEEDED COMMAND...: runs it with the time left, or skips it when less than needed is left
run() {
  local name=$1 need=$2; shift 2
  local t=$(( $(left) ))
  if [ "$t" -lt "$need" ]; then SKIPPED+=("$name"); say "== $name: skipped, ${t} s left"; return; fi
  say "== $name"
  local t0=$SECONDS
  timeout --kill-after=5 "$t" "$@" 2>&1 | grep -v -e '^ *$' | sed "s/^/[$CARD] /"
  local rc=${PIPESTATUS[0]}
  say "   ($name: exit $rc, $((SECONDS - t0)) s)"
}
has_flag() { "$PY" "$1" --help 2>/dev/null | grep -q -- "$2"; }

# ---- 2. the card's peak -------------------------------------------------------------------------------
run "machine_peak" 30 "$PY" benchmarks/machine_peak.py --repeats 10

# ---- 3. steps -------------------------------------------------------------------------------------------
LAYOUTS="dense chunk"
TRAIN_PREC=(exact) EVAL_PREC=(exact) TRAIN_PFLAG="" EVAL_PFLAG="" EVAL_LFLAG=1
has_flag benchmarks/train_speed.py --precision && TRAIN_PREC=(exact fast) TRAIN_PFLAG=1
has_flag benchmarks/eval_speed.py --precision && EVAL_PREC=(exact fast) EVAL_PFLAG=1
has_flag benchmarks/eval_speed.py --layout || EVAL_LFLAG=""
[ -z "$TRAIN_PFLAG" ] && say "train_speed.py has no --precision: exact only"
[ -z "$EVAL_PFLAG" ] && say "eval_speed.py has no --precision: exact only"
[ -z "$EVAL_LFLAG" ] && say "eval_speed.py has no --layout: its default layout only"
TRAIN=(benchmarks/train_speed.py --skip_torch --buckets 512 --num_videos 512)
EVAL=(benchmarks/eval_speed.py --preset activitynet --batch_size 256 --repeats 2)

# most useful first: batch 256 training and evaluation in each layout, exact then fast; then batch 64
for layout in $LAYOUTS; do
  for p in "${TRAIN_PREC[@]}"; do
    run "train b256 $layout $p" 60 "$PY" "${TRAIN[@]}" --batch_size 256 --steps 10 --layout "$layout" \
      ${TRAIN_PFLAG:+--precision "$p"}
  done
  if [ -n "$EVAL_LFLAG" ] || [ "$layout" = dense ]; then
    for p in "${EVAL_PREC[@]}"; do
      run "eval b256 ${EVAL_LFLAG:+$layout }$p" 60 "$PY" "${EVAL[@]}" ${EVAL_LFLAG:+--layout "$layout"} \
        ${EVAL_PFLAG:+--precision "$p"}
    done
  fi
done
for layout in $LAYOUTS; do
  for p in "${TRAIN_PREC[@]}"; do
    run "train b64 $layout $p" 45 "$PY" "${TRAIN[@]}" --batch_size 64 --steps 20 --layout "$layout" \
      ${TRAIN_PFLAG:+--precision "$p"}
  done
done

say "done in $((SECONDS - START)) s; skipped for time: ${SKIPPED[*]:-none}"
