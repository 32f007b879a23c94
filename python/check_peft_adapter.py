"""Load a LoRA adapter folder written by dka (peft format) with the pinned peft onto the timm
model of a fixture, and print the largest difference from the outputs dka computed.

Usage: .venv/bin/python python/check_peft_adapter.py FIXTURE_DIR ADAPTER_DIR DKA_OUTPUTS
(FIXTURE_DIR holds config.json + model.safetensors; DKA_OUTPUTS holds `input` and `logits`).
"""
import json
import sys

import torch
from peft import PeftModel
from safetensors.torch import load_file
from timm.models.vision_transformer import VisionTransformer


def main(fixture: str, adapter: str, outputs: str) -> None:
    cfg = json.load(open(f"{fixture}/config.json"))
    cfg.pop("arch")
    model = VisionTransformer(**cfg)
    model.load_state_dict(load_file(f"{fixture}/model.safetensors"))
    model = PeftModel.from_pretrained(model, adapter).eval()
    ours = load_file(outputs)
    with torch.no_grad():
        theirs = model(ours["input"])
    print(f"max_abs_diff {(theirs - ours['logits']).abs().max().item():.3e}")


if __name__ == "__main__":
    main(*sys.argv[1:4])
