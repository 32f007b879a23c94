# dka: Dual-Kernel Adapter toolkit. `just --list` explains every recipe.
set shell := ["bash", "-euo", "pipefail", "-c"]

python := ".venv/bin/python"
dka := "target/debug/dka"

# List the recipes.
default:
    @just --list

# Install the pinned Python environment (.venv: PyTorch 2.11.0, timm, peft) and link .libtorch. Idempotent.
setup:
    scripts/setup.sh

# Fetch the registry medical images (MNI152, Colin27, a fundus photo) into .assets/, checksummed. Idempotent.
assets:
    scripts/assets.sh

# Build the workspace and the `dka` binary.
build: setup
    cargo build --workspace

# Write the parity fixtures with the pinned timm (fixtures/, git-ignored).
fixtures: setup
    {{python}} python/make_fixtures.py fixtures

# Run the whole test suite (sets itself up first).
test: setup fixtures assets
    cargo test --workspace

# The end-to-end demo: device report, then timm-parity feature extraction from the command line.
demo: build fixtures assets
    scripts/demo.sh

# Show the device, threads, libtorch and whether CUDA is usable.
info: build
    {{dka}} info

# Convert a PyTorch checkpoint (.pth/.bin/.safetensors) to safetensors with timm names.
convert in out: build
    #!/usr/bin/env bash
    set -euo pipefail
    src="{{in}}"
    if [[ "$src" != *.safetensors ]]; then
        tmp=$(mktemp --suffix=.safetensors)
        trap 'rm -f "$tmp"' EXIT
        {{python}} python/pth_to_safetensors.py "$src" "$tmp"
        src="$tmp"
    fi
    {{dka}} convert --input "$src" --output "{{out}}"

# Benchmark DKA's depthwise convolutions (plain vs exact fast path) and a ViT-B/16 training step (DKA vs Adapter): results/bench/dka_conv.csv.
bench-dka: build
    {{dka}} bench conv --output results/bench/dka_conv.csv

# Every benchmark.
bench: bench-dka

# Trainable/total parameters of ViT-B/16 under every method: results/params.csv.
params: build
    {{dka}} params --backbone vit_base_patch16_224 --output results/params.csv
