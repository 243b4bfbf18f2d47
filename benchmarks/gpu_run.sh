#!/usr/bin/env bash
# Every GPU check and figure of issue 14 in one call, most important first, inside one time budget.
#
#   [STAGES="..."] [NO_REFERENCE=1] bash benchmarks/gpu_run.sh [SECONDS]   (default 520; logs in $OUT, else ./gpu_out)
#
# Stages: exactness of the fused kernels on the device, eager training steps (fp32 + bf16,
# with the bcos reference), where a step's wall time goes (step_timeline: host issue vs GPU
# time, syncs, hot host code), host time per launch (launch_cost), explanation vs forward,
# per-kernel bandwidth + a profile, then compiled training steps per model (compiled_<model>;
# graphs_<model>: inductor's CUDA graphs, torch.compile mode="reduce-overhead", fp32 + bf16).
# Each stage gets its own log and at most what is left of the budget, so a slow stage
# (inductor compiles) cannot swallow the others' results.
# Wheels in .whl/ (timm, bcos: the versions the CPU machine tests with) are installed first.
set -u
BUDGET=${1:-520}
DEADLINE=$(( $(date +%s) + BUDGET ))
OUT=${OUT:-gpu_out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
PY=${PYTHON:-python3}

if ls .whl/*.whl >/dev/null 2>&1; then
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        && export PYTHONPATH="/tmp/site:$PYTHONPATH"
fi

stage() {  # stage NAME LIMIT COMMAND...: run with min(LIMIT, time left), log to $OUT/NAME.log
    local name=$1 limit=$2; shift 2
    local left=$(( DEADLINE - $(date +%s) ))
    (( left < limit )) && limit=$left
    if (( limit < 15 )); then echo "== $name: skipped, ${left}s left"; return; fi
    local start=$(date +%s)
    timeout "$limit" "$@" >"$OUT/$name.log" 2>&1
    echo "== $name: rc=$? in $(( $(date +%s) - start ))s (limit ${limit}s)"
    grep -E '^\||passed|failed|skipped|rror|ms$|x$' "$OUT/$name.log" | tail -n 24
}

REF=${NO_REFERENCE:+--no-reference}  # NO_REFERENCE=1 leaves the bcos reference out of the eager round
run_stage() {
    case $1 in
    env) stage env 30 bash -c "nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm --format=csv;
        $PY -c 'import torch, triton, timm, bcos; print(torch.__version__, triton.__version__, timm.__version__, torch.cuda.get_device_name())'"
        cat "$OUT/env.log" ;;
    kernels_test) stage kernels_test 120 $PY -m pytest tests/test_kernels.py -q -k cuda -p no:cacheprovider ;;
    models_eager) stage models_eager 150 $PY benchmarks/models.py --device cuda --batch 64 --repeats 10 \
        --precision fp32 bf16 $REF ;;
    explain) stage explain 60 $PY benchmarks/explain.py --device cuda --batch 64 --repeats 10 --no-reference ;;
    kernels_bench) stage kernels_bench 90 $PY benchmarks/kernels.py --batch 64 --profile bcos_resnet50 ;;
    launch_cost) stage launch_cost 40 $PY benchmarks/launch_cost.py ;;
    step_timeline) stage step_timeline 75 $PY benchmarks/step_timeline.py --models resnet50 --batch 64 ;;
    compiled_*) stage "$1" 240 $PY benchmarks/models.py --device cuda --batch 64 --repeats 10 --compile \
        --no-reference --models "${1#compiled_}" --precision fp32 ;;
    graphs_*) stage "$1" 300 $PY benchmarks/models.py --device cuda --batch 64 --repeats 10 --compile \
        --compile-mode reduce-overhead --no-reference --models "${1#graphs_}" --precision fp32 bf16 ;;
    *) echo "unknown stage $1" ;;
    esac
}

# STAGES="..." picks and orders the stages (a short rerun: STAGES="env kernels_test models_eager")
DEFAULT_STAGES="env kernels_test models_eager step_timeline launch_cost graphs_resnet50 explain kernels_bench
    compiled_densenet121"
for name in ${STAGES:-$DEFAULT_STAGES}; do
    run_stage "$name"
done
