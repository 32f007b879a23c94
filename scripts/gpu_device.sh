#!/usr/bin/env bash
# The first GPU run as one script, for a GPU machine without a Rust toolchain, `just` or network
# (this workplace's lent machines): what `just gpu-check` and `just bench device=cuda` run, with
# the binary and fixtures that `scripts/gpu_pack.sh` packed (carry `.gpu` and `fixtures`) and
# that machine's own PyTorch (`python3`, the same 2.11.0 our `.venv` pins; timm and safetensors
# for the bench's reference).
#
#   bash scripts/gpu_device.sh              writes under $OUT (default target/gpu-out):
#     log.txt                 everything printed
#     parts.csv               part,rc,seconds (a part that fails or runs out of time is noted and
#                             the next one still runs)
#     gpu/check.csv (+ .meta.json)          -> results/gpu/
#     bench/steps-cuda.csv, steps-cuda-bf16.csv (+ .meta.json, .png)   -> results/bench/
#
# Time limits per part (seconds): GPU_CHECK_S (default 200), BENCH_S (150 each for fp32 and
# bf16), so the whole script ends within about 9 minutes. Checking the script itself on a machine
# without CUDA: DKA_GPU_DEVICE=cpu GPU_CHECK_ARGS="--backbone vit_tiny_patch16_224 --cpu-steps"
# BENCH_ARGS="--quick" DKA_GPU_PYTHON=.venv/bin/python bash scripts/gpu_device.sh
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-target/gpu-out}
mkdir -p "$out/gpu" "$out/bench"
exec > >(tee "$out/log.txt") 2>&1
tee_pid=$!
python=${DKA_GPU_PYTHON:-python3}
dka=${DKA_GPU_BIN:-.gpu/dka}
device=${DKA_GPU_DEVICE:-cuda}
export PYTHONUNBUFFERED=1

if [ ! -x "$dka" ] || [ ! -d fixtures ]; then
    echo "gpu_device: $dka or fixtures/ is missing: run scripts/gpu_pack.sh where the project builds and carry .gpu and fixtures" >&2
    exit 2
fi
cat .gpu/BUILD 2>/dev/null
# The binary looks for libtorch where it was built; here it is this machine's PyTorch.
torchlib=$("$python" -c 'import os, torch; print(os.path.join(os.path.dirname(torch.__file__), "lib"))') || {
    echo "gpu_device: $python has no torch (set DKA_GPU_PYTHON)" >&2
    exit 2
}
export LD_LIBRARY_PATH="$torchlib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
"$python" -c 'import torch, timm; print(f"python: torch {torch.__version__}, timm {timm.__version__}, cuda usable {torch.cuda.is_available()}")'
echo "this machine: $(ldd --version 2>/dev/null | head -n 1)"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null || echo "nvidia-smi: not here"
if ldd "$dka" | grep "not found"; then
    echo "gpu_device: libraries missing for $dka (above; LD_LIBRARY_PATH=$LD_LIBRARY_PATH)" >&2
    exit 3
fi

echo "part,rc,seconds" >"$out/parts.csv"
status=0
# part NAME LIMIT COMMAND...: runs one part under its time limit and notes how it ended.
part() {
    local name=$1 limit=$2 started rc took
    shift 2
    echo
    echo "== $name (limit ${limit} s): $*"
    started=$(date +%s)
    timeout --kill-after=10 "$limit" "$@"
    rc=$?
    # The bench's reference workers are children of dka: none may outlive its part.
    pkill -f benches/reference/ 2>/dev/null || true
    took=$(($(date +%s) - started))
    echo "== $name: rc $rc after $took s"
    echo "$name,$rc,$took" >>"$out/parts.csv"
    [ "$rc" = 0 ] || status=1
}

part info 60 "$dka" info
# shellcheck disable=SC2086 # the ARGS variables are word lists
part gpu-check "${GPU_CHECK_S:-200}" "$dka" gpu-check --out "$out/gpu/check.csv" ${GPU_CHECK_ARGS:-}
# shellcheck disable=SC2086
part bench-fp32 "${BENCH_S:-150}" "$dka" bench steps --device "$device" --python "$python" \
    --output "$out/bench/steps-cuda.csv" ${BENCH_ARGS:-}
# shellcheck disable=SC2086
part bench-bf16 "${BENCH_S:-150}" "$dka" bench steps --device "$device" --python "$python" \
    --precision bf16 --output "$out/bench/steps-cuda-bf16.csv" ${BENCH_ARGS:-}

echo
cat "$out/parts.csv"
# Let tee write the log's last lines before the machine collects $OUT.
exec >&- 2>&-
wait "$tee_pid" 2>/dev/null
exit "$status"
