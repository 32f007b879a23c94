# dka: Dual-Kernel Adapter toolkit. `just --list` explains every recipe.
set shell := ["bash", "-euo", "pipefail", "-c"]
set positional-arguments := true

python := ".venv/bin/python"
# Arguments of the paper recipes, before or after the recipe name:
# `just reproduce-table2 data=~/datasets weights=vit_b16.safetensors`,
# `just profile=quick reproduce-table2` (see scripts/grid.sh for every key).
data := ""
weights := ""
profile := ""
device := ""
# The PyTorch 2.11.0 variant `just setup` installs: default (CUDA 13.0, NVIDIA driver >= 580),
# cu128 or cu126 (CUDA 12, driver >= 525.60), cpu. `just setup cuda=cu126` or
# `just cuda=cu126 setup`; later recipes keep what is installed.
cuda := ""
dka := "target/debug/dka"
# Grid workers for the CPU recipes (demo, demo-convergence, demo-lr, long-range): one per 2 cores
# (scripts/cpu_workers.sh says why); DKA_WORKERS=N overrides.
cpu_workers := `scripts/cpu_workers.sh`

# List the recipes.
default:
    @just --list

# Install the pinned Python environment (.venv: PyTorch 2.11.0, timm, peft) and link .libtorch. Idempotent. `cuda=cu126|cu128|cu130|cpu` picks the PyTorch build (see `cuda` above).
setup *args:
    scripts/setup.sh cuda={{cuda}} "$@"

# Fetch the registry data into .assets/, checksummed: MNI152 and Colin27 MRI, a fundus photo, DINOv2-S/14 weights. Idempotent.
assets: setup
    scripts/assets.sh

# Build the workspace and the `dka` binary.
build: setup
    cargo build --workspace

# Write the parity fixtures with the pinned timm (fixtures/, git-ignored).
fixtures: setup
    {{python}} python/make_fixtures.py fixtures

# Run the whole test suite (sets itself up first): the layer check (scripts/layers.py:
# dka-bench's dependencies point down its layers; no module cycle in any crate), then every
# crate's tests.
test: setup fixtures assets layers
    cargo test --workspace

# The layer check alone (seconds; no build).
layers:
    python3 scripts/layers.py

# `dka grid --emit-slurm` on a real single-node Slurm started on localhost (installs Debian's
# slurm and munge if missing; needs root): a 3-task array, one task cancelled mid-run and
# resubmitted, runs.csv checked to hold the grid exactly once (scripts/test_slurm.sh).
test-slurm: build
    scripts/test_slurm.sh

# Property tests of our own parsers (NIfTI headers, manifests, CSV readers, experiment files,
# run configs, --shard, Slurm scripts, key renaming, peft folders) with many more cases than
# `just test` runs (a few minutes); failures are saved to the crates' tests/*.proptest-regressions.
fuzz cases="5000": setup fixtures
    PROPTEST_CASES={{cases}} cargo test -p dka-data --test fuzz
    PROPTEST_CASES={{cases}} cargo test -p dka-bench --test fuzz --test fuzz_cli

# The end-to-end demo: device report, timm-parity feature extraction, then DKA and baselines fine-tuned on real registry MRI. Its set-up (`just setup build fixtures assets`) runs side by side where it can (scripts/prepare.sh).
demo:
    #!/usr/bin/env bash
    set -euo pipefail
    export DKA_DEMO_STARTED=$(date +%s)
    scripts/prepare.sh cuda={{cuda}}
    scripts/demo.sh

# Whether the demo trains long enough: its settings for 4x as many epochs, every method on the pretrained backbones (one draw, both fractions), into results/demo_convergence/ (7 to 14 min on 2 cores). One process: its OpenMP threads may spin (ACTIVE), as in the demo.
demo-convergence: build assets
    OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-ACTIVE} {{dka}} grid experiments/demo.toml --profile convergence --data colin27-gm-slab=.assets/colin27 --out results/demo_convergence --workers {{cpu_workers}}
    .venv/bin/python scripts/curves.py results/demo_convergence

# Whether larger or annealed learning rates reach LiteMedSAM's plateau in the demo's steps: its adapter methods at the demo's length under four adapter learning-rate settings, into results/demo_lr/ (up to 9 min on 2 cores).
demo-lr: build assets
    OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-ACTIVE} {{dka}} grid experiments/demo.toml --profile lr --data colin27-gm-slab=.assets/colin27 --out results/demo_lr --workers {{cpu_workers}}
    .venv/bin/python scripts/curves.py results/demo_lr

# Check this build on the GPU: dka info, fixtures' forward on CPU and CUDA (fp32, bf16), a bf16
# training step of every method on ViT-B/16 with time and peak memory, a 2-epoch grid on CUDA:
# results/gpu/check.csv. Without CUDA it says so and runs the CPU part.
gpu-check: build fixtures
    {{dka}} info
    {{dka}} gpu-check --out results/gpu/check.csv

# For a GPU machine with PyTorch but no Rust, `just` or network: packs the stripped binary into
# .gpu/ (with fixtures/, ~20 MiB to carry); there, `bash scripts/gpu_device.sh` runs gpu-check and
# the bench (fp32, bf16) on CUDA into $OUT.
gpu-pack: build fixtures
    scripts/gpu_pack.sh

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

# Images/s of the data path at 224: uncached vs the decoded cache, ISIC-2019-like JPEGs and BraTS-like volumes: results/bench/data.csv.
bench-data: build
    {{dka}} bench data --output results/bench/data.csv

# One training step of this project side by side with a PyTorch-eager reference (timm + plain
# modules, benches/reference/): time, GFLOP/s, peak memory, loss parity, interleaved in one run:
# results/bench/steps.csv (+ .meta.json, .png), and in bf16 autocast where the device has native bf16:
# steps-bf16.csv. `just bench device=cuda` on a GPU: steps-cuda.csv and steps-cuda-bf16.csv.
bench: build
    {{dka}} bench steps --device {{ if device == "" { "cpu" } else { device } }} --output results/bench/steps{{ if device == "" { "" } else if device == "cpu" { "" } else { "-cuda" } }}.csv
    if [ "{{device}}" != "" ] && [ "{{device}}" != "cpu" ] || grep -qwE 'avx512_bf16|amx_bf16' /proc/cpuinfo; then \
        {{dka}} bench steps --precision bf16 --device {{ if device == "" { "cpu" } else { device } }} --output results/bench/steps{{ if device == "" { "" } else if device == "cpu" { "" } else { "-cuda" } }}-bf16.csv; \
    else echo "bench: no native bf16 on this CPU (AVX512-BF16 or AMX): bf16 rows skipped"; fi

# Eager PyTorch on dka's own FFT path: the DKA d192 / Adapter ViT-B step ratio (PASSIVE and libgomp's default) and the 32x32 DKA stack: results/bench/fft_eager.csv.
bench-fft-eager: setup
    rm -f results/bench/fft_eager.csv
    OMP_WAIT_POLICY=PASSIVE .venv/bin/python benches/reference/fft_eager.py --out results/bench/fft_eager.csv
    env -u OMP_WAIT_POLICY .venv/bin/python benches/reference/fft_eager.py --out results/bench/fft_eager.csv
    OMP_WAIT_POLICY=PASSIVE .venv/bin/python benches/reference/fft_eager.py --stack 32 --out results/bench/fft_eager.csv

# Where a step's time goes, operator by operator, in this project and in the PyTorch reference
# (each under its own profiler, after the parity steps): results/bench/profile/<case>.csv (self
# time per step side by side, the largest excess of this project first) and the Chrome traces
# (<case>-pytorch.json, <case>-dka.json; not committed: open them in https://ui.perfetto.dev).
# Defaults: the Adapter d192 case, fp32, the CPU (device=cuda on a GPU).
# Profile a training step operator by operator against PyTorch: `just bench-profile "cases=adapter d192,dka d192" precision=bf16`.
bench-profile *args: build
    #!/usr/bin/env bash
    set -euo pipefail
    cases="adapter d192"; precision=fp32; dev="{{device}}"
    for a in "$@"; do
        case "$a" in
            cases=*) cases=${a#cases=} ;;
            precision=*) precision=${a#precision=} ;;
            device=*) dev=${a#device=} ;;
            *) echo "bench-profile: unknown argument '$a' (cases=..., precision=fp32|bf16, device=cpu|cuda)" >&2; exit 2 ;;
        esac
    done
    {{dka}} bench steps --device "${dev:-cpu}" --cases "$cases" --precision "$precision" --profile results/bench/profile

# Every benchmark: steps against PyTorch, DKA's convolutions, the data path.
bench-all: bench bench-dka bench-data bench-fft-eager

# Issue 25: images whose class is the colour 10 patches right of a marker; only a kernel that
# reaches 10 patches can learn it.
# The long-range task: DKA, its large or small kernel alone, Adapter, 3 seeds, then dka inspect: results/long_range/ (~20 min on 2 cores).
long-range: build
    #!/usr/bin/env bash
    set -euo pipefail
    started=$(date +%s)
    commit="$(git rev-parse --short HEAD 2>/dev/null || echo unknown)$(git diff --quiet HEAD -- crates experiments 2>/dev/null || echo ' (with uncommitted changes)')"
    rm -rf results/long_range
    {{dka}} data synth --task long-range --out results/long_range/data --per-class 300
    {{dka}} grid experiments/long_range.toml --data folder=results/long_range/data --weights none --device cpu --out results/long_range --workers {{cpu_workers}}
    {{dka}} inspect results/long_range --data folder=results/long_range/data --device cpu --images 60
    { echo "# How results/long_range was made"; echo; \
      echo "- command: \`just long-range\` (experiments/long_range.toml; data: \`dka data synth --task long-range --per-class 300\`, seed 0)"; \
      echo "- finished: $(date -u +%Y-%m-%dT%H:%M:%SZ), $(( $(date +%s) - started )) s in all"; \
      echo "- commit: $commit (when the recipe started)"; \
      echo "- machine: $(nproc) CPU cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//')), $(uname -sr)"; \
      echo "- weights: none (a random-initialised 2-block ViT, experiments/backbones/vit_long_range.json)"; } > results/long_range/MADE.md

# Trainable/total parameters of ViT-B/16 under every method: results/params.csv.
params: build
    {{dka}} params --backbone vit_base_patch16_224 --output results/params.csv

# --- Paper tables and figures. Each takes data= (a folder with one sub-folder per dataset, or
# NAME=PATH,...), weights= (.safetensors, or none for the random-init control), profile= (`quick`:
# tiny backbone, synthetic and registry data, minutes on 2 cores; `paper`: the authors' best-test
# protocol), device= (auto, cpu, cuda:N), and shard=I/N, retry=1, dry=1, out=DIR, cache=DIR.
# They run offline: only the quick and demo profiles fetch registry files. Every grid of a recipe
# runs even when another has failed runs. Results: results/<experiment>[-<profile>]/.

# Table 1: medical-pretrained MedSAM encoder (ISIC-2019 accuracy, BUSI foreground IoU).
reproduce-table1 *args: build
    scripts/grid.sh experiments/table1_classification.toml experiments/table1_segmentation.toml -- data="{{data}}" weights="{{weights}}" profile="{{profile}}" device="{{device}}" "$@"

# Table 2: natural-pretrained ViT-B/16, classification and segmentation, 11 methods x 3 datasets x 3 fractions x 5 draws.
reproduce-table2 *args: build
    scripts/grid.sh experiments/table2_classification.toml experiments/table2_segmentation.toml -- data="{{data}}" weights="{{weights}}" profile="{{profile}}" device="{{device}}" "$@"

# Table 2's plan: the runs still to do and their estimated time on this device (no data needed).
plan-table2 *args: build
    scripts/grid.sh experiments/table2_classification.toml experiments/table2_segmentation.toml -- data="{{data}}" weights="{{weights}}" profile="{{profile}}" device="{{device}}" plan=1 "$@"

# Table 3: DKA middle dimension (BUSI classification, ISIC-2018 segmentation).
ablate-middle-dim *args: build
    scripts/grid.sh experiments/table3_middle_dim_cls.toml experiments/table3_middle_dim_seg.toml -- data="{{data}}" weights="{{weights}}" profile="{{profile}}" device="{{device}}" "$@"

# Table 3b: learnable kernel sizes vs 51x51 + 5x5 (COVID).
ablate-learnable-kernel *args: build
    scripts/grid.sh experiments/table3b_learnable_kernel.toml -- data="{{data}}" weights="{{weights}}" profile="{{profile}}" device="{{device}}" "$@"

# Figure 8: large x small kernel sizes (BUSI 1.25 %).
ablate-kernel-sizes *args: build
    scripts/grid.sh experiments/fig8_kernel_sizes.toml -- data="{{data}}" weights="{{weights}}" profile="{{profile}}" device="{{device}}" "$@"

# Figure 9: large only, small only, both.
ablate-single-dual *args: build
    scripts/grid.sh experiments/fig9_single_dual.toml -- data="{{data}}" weights="{{weights}}" profile="{{profile}}" device="{{device}}" "$@"

# Figure 7: adapter x head learning rates.
ablate-lr *args: build
    scripts/grid.sh experiments/fig7_lr_grid.toml -- data="{{data}}" weights="{{weights}}" profile="{{profile}}" device="{{device}}" "$@"

# Figure 5: methods at equal trainable-parameter budgets (and results/params.csv).
compare-params *args: build
    scripts/grid.sh experiments/fig5_equal_params.toml -- data="{{data}}" weights="{{weights}}" profile="{{profile}}" device="{{device}}" "$@"

# Figure 1: accuracy against training-data fraction.
data-size-curve *args: build
    scripts/grid.sh experiments/fig1_data_size.toml -- data="{{data}}" weights="{{weights}}" profile="{{profile}}" device="{{device}}" "$@"

# --- Figures 2 and 6 (effective receptive fields, RepLKNet's procedure) and redrawing figures.
# `just erf grid=results/<experiment> data=...` measures a finished grid's Adapter, LoRA, Convpass
# and DKA runs (draw 0) at each data fraction and each method at initialisation: results/erf/<grid
# name>/ (erf_grid.png/.svg, area_ratios.csv, one folder per map). `just profile=demo erf` first
# trains the four methods on registry MRI with DINOv2-S/14 on the CPU (experiments/erf_demo.toml,
# results/erf-demo/), then writes results/erf/demo/. Other keys: images=50 out=DIR device=...
# weights=... (weights override the runs' own).

# Figures 2 and 6: ERF map grid and area ratios of Adapter, LoRA, Convpass, DKA (grid=... data=..., or profile=demo).
erf *args: build
    #!/usr/bin/env bash
    set -euo pipefail
    declare -A kv=([profile]="{{profile}}" [data]="{{data}}" [weights]="{{weights}}" [device]="{{device}}" [grid]="" [images]=50 [out]="")
    for arg in "$@"; do
        key=${arg%%=*} val=${arg#*=}
        case "$key" in
            grid|profile|data|weights|device|images|out) if [ -n "$val" ]; then kv[$key]=$val; fi ;;
            *) echo "error: unknown argument '$arg': use grid= profile= data= weights= device= images= out=" >&2; exit 2 ;;
        esac
    done
    common=(--images "${kv[images]}")
    if [ -n "${kv[device]}" ]; then common+=(--device "${kv[device]}"); fi
    if [ -n "${kv[weights]}" ]; then common+=(--weights "${kv[weights]}"); fi
    if [ "${kv[profile]}" = demo ]; then
        scripts/assets.sh
        grid=results/erf-demo
        train=(--data mni152=.assets/mni152 --weights .assets/dinov2/model.safetensors --out "$grid")
        if [ -n "${kv[device]}" ]; then train+=(--device "${kv[device]}"); fi
        {{dka}} grid experiments/erf_demo.toml "${train[@]}"
        data=mni152=.assets/mni152
        out=${kv[out]:-results/erf/demo}
    elif [ -n "${kv[profile]}" ]; then
        echo "error: profile=${kv[profile]}: erf knows profile=demo; for any other grid pass grid=results/<experiment>" >&2; exit 2
    else
        grid=${kv[grid]}
        data=${kv[data]}
        if [ -z "$grid" ] || [ -z "$data" ]; then
            echo "error: pass grid=results/<experiment> and data= (a folder of datasets or NAME=PATH,...), or profile=demo" >&2; exit 2
        fi
        out=${kv[out]:-results/erf/$(basename "$grid")}
    fi
    if [ -d "$data" ]; then common+=(--data-dir "$data"); else common+=(--data "$data"); fi
    {{dka}} erf --grid "$grid" --methods adapter,dka,lora,convpass --init --out "$out" "${common[@]}"
    echo "area ratios ($out/area_ratios.csv):"
    column -s, -t < "$out/area_ratios.csv" | cut -c1-160

# Redraw every figure under results/ from its CSVs and ERF maps, without training (PNG at 300 dpi, SVG).
plots: build
    {{dka}} plots --results results
