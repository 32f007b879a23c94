#!/usr/bin/env bash
# Runs one experiment grid with the justfile's arguments:
#   scripts/grid.sh EXPERIMENT.toml DATA WEIGHTS PROFILE
# DATA: a folder with one sub-folder per dataset name (covid, busi-cls, isic2019, ...), or a
# comma-separated list of NAME=PATH. WEIGHTS: a .safetensors file. PROFILE: e.g. `quick`,
# which with no DATA uses the synthetic images and the registry MRI (made/fetched here).
set -euo pipefail
cd "$(dirname "$0")/.."
exp=$1 data=${2:-} weights=${3:-} profile=${4:-}
args=(grid "$exp")
if [ -n "$profile" ]; then args+=(--profile "$profile"); fi
if [ -z "$data" ] && [ "$profile" = "quick" ]; then
    [ -d .assets/synthetic ] || target/debug/dka data synth --out .assets/synthetic --classes 3 --per-class 40 --size 32
    data="folder=.assets/synthetic,mni152=.assets/mni152"
fi
if [ -z "$data" ]; then
    echo "data= is required: a folder with one sub-folder per dataset, or NAME=PATH,... (see README)" >&2
    exit 2
elif [ -d "$data" ]; then
    args+=(--data-dir "$data")
else
    IFS=, read -ra pairs <<< "$data"
    for p in "${pairs[@]}"; do args+=(--data "$p"); done
fi
if [ -n "$weights" ]; then args+=(--weights "$weights"); fi
target/debug/dka "${args[@]}"
