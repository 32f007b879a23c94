"""Turn a PyTorch checkpoint (.pth / .bin / .pt, torch.save of a state dict) into safetensors.

Nested checkpoints ({"state_dict": ...}, {"model": ...}) are unwrapped; tensors are written
as they are (key renaming to timm's names is `dka convert`'s job, in one place).
Usage: .venv/bin/python python/pth_to_safetensors.py IN OUT
"""
import sys

import torch
from safetensors.torch import save_file


def main(src: str, dst: str) -> None:
    obj = torch.load(src, map_location="cpu", weights_only=True)
    for key in ("state_dict", "model", "module"):
        if isinstance(obj, dict) and key in obj and isinstance(obj[key], dict):
            obj = obj[key]
    if not isinstance(obj, dict):
        sys.exit(f"{src}: expected a state dict, found {type(obj).__name__}")
    tensors = {k: v.contiguous() for k, v in obj.items() if isinstance(v, torch.Tensor)}
    skipped = len(obj) - len(tensors)
    save_file(tensors, dst)
    print(f"{src}: {len(tensors)} tensors -> {dst}" + (f" ({skipped} non-tensor entries skipped)" if skipped else ""))


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2])
