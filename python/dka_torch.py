"""Load a dka run exported with `dka export RUN --format torch --out DIR` as a PyTorch module.

    import dka_torch
    model = dka_torch.load("DIR")                      # backbone weights in the export
    model = dka_torch.load("DIR", backbone_weights="vit_base_patch16_224.safetensors")
    logits = model(x)   # x: [B, 3, H, W], normalised as DIR/dka_export.json's "input" says
                        # -> [B, C], or [B, C, H, W] for segmentation

The model is timm's VisionTransformer with the trained modules dka attached, computing what
dka computes. `DIR/dka_export.json` says what every block's sites hold (`sites`): this file
has one small class per kind of module (bottleneck, DKA, Convpass bypass, LoRA, prompt
tokens) and one block forward that applies the sites in dka's order:

    x = x + attn_branch(ls1(Attn(LN1 x))) + attn_parallel(x, LN1 x);  x = after_attn(x)
    x = x + mlp_branch(ls2(MLP(LN2 x))) + mlp_parallel(x, LN2 x);     x = after_mlp(x)

with LoRA deltas on qkv/proj/fc1/fc2 and prompt tokens inserted after the class token.
`backbone_weights` (timm names, .safetensors or a torch checkpoint) is needed only when the
export does not include the backbone (`backbone_included` in dka_export.json).

Command line: `python python/dka_torch.py check DIR...` loads every export (torch, and also
peft or merged exports, through peft and timm) and compares its logits with the ones dka wrote
into DIR/check.safetensors; exit status 1 if any differs by more than 1e-4.
"""
import hashlib
import json
import sys
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import load_file

TOLERANCE = 1e-4

# dka's ViT config fields that are timm's VisionTransformer arguments.
VIT_ARGS = ["img_size", "patch_size", "in_chans", "global_pool", "embed_dim", "depth", "num_heads",
            "mlp_ratio", "qkv_bias", "init_values", "class_token", "fc_norm"]


def activation(name, x):
    if name == "gelu":
        return F.gelu(x)
    if name == "relu":
        return F.relu(x)
    if name == "quick-gelu":
        return x * torch.sigmoid(1.702 * x)
    raise ValueError(f"unknown activation {name}")


def linear(t, name, bias=True):
    """An nn.Linear holding `name.weight` (and `name.bias`) of the tensors `t`."""
    w = t[f"{name}.weight"]
    b = t.get(f"{name}.bias") if bias else None
    m = nn.Linear(w.shape[1], w.shape[0], bias=b is not None)
    with torch.no_grad():
        m.weight.copy_(w)
        if b is not None:
            m.bias.copy_(b)
    return m


class Bottleneck(nn.Module):
    """`Up(act(Down z)) * scale` (Adapter, AdaptFormer, CIAT, AIM), with or without the input
    added back (`skip`); as a parallel module it reads the branch's residual input or its
    normalised input (`feed`)."""

    def __init__(self, d, t):
        super().__init__()
        self.down, self.up = linear(t, d["prefix"] + ".down"), linear(t, d["prefix"] + ".up")
        self.act, self.scale, self.skip, self.feed = d["act"], d["scale"], d["skip"], d["feed"]

    def delta(self, z):
        u = self.up(activation(self.act, self.down(z)))
        return u if self.scale == 1.0 else u * self.scale

    def token(self, x, layout):
        d = self.delta(x)
        return x + d if self.skip else d

    def parallel(self, x, normed, layout):
        return self.token(x if self.feed == "residual" else normed, layout)


class Dka(nn.Module):
    """The Dual-Kernel Adapter on tokens: `x + Up(GELU(conv(act(Down x))))`, the depthwise
    large + small (or learnable-size) convolutions on the patch grid; prefix tokens skip them.
    `activation = authors` puts a GELU right after Down as well."""

    def __init__(self, d, t):
        super().__init__()
        p = d["prefix"]
        self.down = linear(t, p + ".down", d["bias"])
        self.up = linear(t, p + ".up", d["bias"])
        self.authors = d["activation"] == "authors"
        k = d["kernels"]
        self.learnable = k.get("learnable")
        if self.learnable:
            self.kernel = t[p + ".conv.weight"]
            self.kernel_bias = t.get(p + ".conv.bias")
            self.theta = t[p + ".radius_theta"]
            self.branches = []
        else:
            self.branches = [(t[f"{p}.conv_{n}.weight"], t.get(f"{p}.conv_{n}.bias"))
                             for n in ("large", "small") if k.get(n)]

    def conv(self, z):
        c = z.shape[1]
        if self.learnable:
            lk = self.learnable
            k = self.kernel.shape[2]
            a = torch.arange(k, dtype=self.theta.dtype) - k // 2
            r = (a[:, None] ** 2 + a[None, :] ** 2).sqrt()
            rho = self.theta * lk["scale"] + lk["init_radius"]
            mask = torch.sigmoid((rho.view(-1, 1, 1, 1) - r.view(1, 1, k, k)) / lk["tau"])
            return F.conv2d(z, self.kernel * mask, self.kernel_bias, padding=k // 2, groups=c)
        return sum(F.conv2d(z, w, b, padding=w.shape[2] // 2, groups=c) for w, b in self.branches)

    def token(self, x, layout):
        p, h, w = layout
        b = x.shape[0]
        z = self.down(x)
        if self.authors:
            z = F.gelu(z)
        d = z.shape[2]
        grid = z[:, p:].reshape(b, h, w, d).permute(0, 3, 1, 2)
        conv = self.conv(grid).permute(0, 2, 3, 1).reshape(b, h * w, d)
        y = torch.cat([z[:, :p], conv], 1)
        return x + self.up(F.gelu(y))


class Convpass(nn.Module):
    """Convpass's bypass beside a branch: `scale * Up(QuickGELU(conv3x3(QuickGELU(Down normed))))`
    on the patch grid; a prefix token is its own 1x1 map (only the centre tap reaches it)."""

    def __init__(self, d, t):
        super().__init__()
        p = d["prefix"]
        self.down, self.up = linear(t, p + ".down"), linear(t, p + ".up")
        self.w, self.b = t[p + ".conv.weight"], t[p + ".conv.bias"]
        self.stride, self.scale = d["stride"], d["scale"]

    def parallel(self, x, normed, layout):
        p, h, w = layout
        b = normed.shape[0]
        z = activation("quick-gelu", self.down(normed))
        d = z.shape[2]
        grid = z[:, p:].reshape(b, h, w, d).permute(0, 3, 1, 2)
        patches = F.conv2d(grid, self.w, self.b, stride=self.stride, padding=1)
        patches = patches.permute(0, 2, 3, 1).reshape(b, h * w, d)
        if p > 0:
            prefix = z[:, :p] @ self.w[:, :, 1, 1].t() + self.b
            patches = torch.cat([prefix, patches], 1)
        return self.up(activation("quick-gelu", patches)) * self.scale


class Lora(nn.Module):
    """`(alpha / r) B A x` added to a frozen Linear's output: over its whole output, or over the
    q/k/v slices of a fused qkv (`slot` 0, 1, 2; zero for the slices without one)."""

    def __init__(self, d, t):
        super().__init__()
        self.parts = [(p["slot"], t[p["a"]], t[p["b"]]) for p in d["parts"]]
        self.scale, self.slice = d["scale"], d["slice"]

    def delta(self, x):
        low = lambda a, b: (x @ a.t()) @ b.t() * self.scale
        if len(self.parts) == 1 and self.parts[0][0] is None:
            return low(self.parts[0][1], self.parts[0][2])
        outs = []
        for slot in range(3):
            part = [p for p in self.parts if p[0] == slot]
            outs.append(low(part[0][1], part[0][2]) if part else
                        x.new_zeros(*x.shape[:-1], self.slice))
        return torch.cat(outs, -1)


KINDS = {"bottleneck": Bottleneck, "dka": Dka, "convpass": Convpass, "lora": Lora}


def attention(attn, x, qkv_delta, proj_delta):
    """timm's fused `Attention.forward` with LoRA deltas on qkv and proj."""
    b, n, c = x.shape
    qkv = attn.qkv(x)
    if qkv_delta is not None:
        qkv = qkv + qkv_delta.delta(x)
    q, k, v = qkv.reshape(b, n, 3, attn.num_heads, c // attn.num_heads).permute(2, 0, 3, 1, 4)
    q, k = attn.q_norm(q), attn.k_norm(k)
    o = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, c)
    o = attn.norm(o)
    y = attn.proj(o)
    return y + proj_delta.delta(o) if proj_delta is not None else y


def mlp(m, x, fc1_delta, fc2_delta):
    h = m.fc1(x)
    if fc1_delta is not None:
        h = h + fc1_delta.delta(x)
    h = m.norm(m.drop1(m.act(h)))
    y = m.fc2(h)
    return y + fc2_delta.delta(h) if fc2_delta is not None else y


def block_forward(blk, x, layout, s):
    """A timm ViT block with dka's sites `s` (site name -> module)."""
    normed = blk.norm1(x)
    a = blk.ls1(attention(blk.attn, normed, s.get("qkv"), s.get("proj")))
    x_new = x + (s["attn_branch"].token(a, layout) if "attn_branch" in s else a)
    if "attn_parallel" in s:
        x_new = x_new + s["attn_parallel"].parallel(x, normed, layout)
    x = s["after_attn"].token(x_new, layout) if "after_attn" in s else x_new
    normed = blk.norm2(x)
    m = blk.ls2(mlp(blk.mlp, normed, s.get("fc1"), s.get("fc2")))
    x_new = x + (s["mlp_branch"].token(m, layout) if "mlp_branch" in s else m)
    if "mlp_parallel" in s:
        x_new = x_new + s["mlp_parallel"].parallel(x, normed, layout)
    return s["after_mlp"].token(x_new, layout) if "after_mlp" in s else x_new


class MaskTransformer(nn.Module):
    """Segmenter's mask transformer, as dka's `mask-transformer` decoder."""

    def __init__(self, head, t):
        super().__init__()
        from functools import partial

        from timm.models.vision_transformer import Block
        d, classes = head["d_model"], head["classes"]
        self.proj_dec = linear(t, "task_head.proj_dec")
        self.cls_emb = nn.Parameter(t["task_head.cls_emb"])
        self.blocks = nn.ModuleList(
            Block(d, max(d // 64, 1), mlp_ratio=4.0, qkv_bias=True,
                  norm_layer=partial(nn.LayerNorm, eps=1e-6)) for _ in range(head["layers"]))
        block_state = {k[len("task_head.blocks."):]: v for k, v in t.items()
                       if k.startswith("task_head.blocks.")}
        self.blocks.load_state_dict(block_state, strict=True)
        self.decoder_norm = nn.LayerNorm(d)
        self.mask_norm = nn.LayerNorm(classes)
        for name in ("decoder_norm", "mask_norm"):
            getattr(self, name).load_state_dict(
                {k: t[f"task_head.{name}.{k}"] for k in ("weight", "bias")})
        self.proj_patch = nn.Parameter(t["task_head.proj_patch"])
        self.proj_classes = nn.Parameter(t["task_head.proj_classes"])
        self.classes = classes

    def forward(self, m):
        b, _, h, w = m.shape
        x = torch.cat([self.proj_dec(m.flatten(2).transpose(1, 2)), self.cls_emb.expand(b, -1, -1)], 1)
        for blk in self.blocks:
            x = blk(x)
        x = self.decoder_norm(x)
        patches = x[:, :h * w] @ self.proj_patch
        cls = x[:, h * w:] @ self.proj_classes
        unit = lambda t: t / t.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        masks = unit(patches) @ unit(cls).transpose(1, 2)
        return self.mask_norm(masks).transpose(1, 2).reshape(b, self.classes, h, w)


class DkaModel(nn.Module):
    """timm's ViT with dka's trained modules and head: normalised `[B, 3, H, W]` -> logits."""

    def __init__(self, vit, sites, prompts, head, tensors, segmentation):
        super().__init__()
        self.vit, self.sites, self.prompts, self.segmentation = vit, sites, prompts, segmentation
        self.site_modules = nn.ModuleList({id(m): m for s in sites for m in s.values()}.values())
        self.head_kind = head["kind"]
        if self.head_kind == "mask-transformer":
            self.head = MaskTransformer(head, tensors)
        else:
            self.head = linear(tensors, "task_head")

    def tokens(self, x):
        """The tokens after the final norm and their layout `(prefix, h, w)`."""
        b, _, hh, ww = x.shape
        p = self.vit.patch_embed.patch_size
        h, w = hh // p[0], ww // p[1]
        t = self.vit.norm_pre(self.vit.patch_drop(self.vit._pos_embed(self.vit.patch_embed(x))))
        np_ = self.vit.num_prefix_tokens
        for i, blk in enumerate(self.vit.blocks):
            prefix = t.shape[1] - h * w
            if self.prompts is not None and i < self.prompts.shape[0]:
                pr = self.prompts[i].unsqueeze(0).expand(b, -1, -1)
                t = torch.cat([t[:, :np_], pr, t[:, prefix:]], 1)
                prefix = np_ + pr.shape[1]
            t = block_forward(blk, t, (prefix, h, w), self.sites[i])
        t = self.vit.norm(t)
        return t, (t.shape[1] - h * w, h, w)

    def forward(self, x):
        t, (prefix, h, w) = self.tokens(x)
        if not self.segmentation:
            pool = self.vit.global_pool
            z = t[:, 0] if pool == "token" else t[:, prefix:].mean(1) if pool == "avg" else t
            return self.head(self.vit.fc_norm(z))
        m = t[:, prefix:].transpose(1, 2).reshape(t.shape[0], -1, h, w)
        if self.head_kind == "mask-transformer":
            per_patch = self.head(m)
        else:
            per_patch = F.conv2d(m, self.head.weight[:, :, None, None], self.head.bias)
        return F.interpolate(per_patch, size=x.shape[2:], mode="bilinear", align_corners=False)


def vit_from(config):
    """timm's VisionTransformer for dka's ViT config (no head; any input size)."""
    from timm.models.vision_transformer import VisionTransformer
    if config.get("arch", "vit") != "vit":
        raise ValueError(f"dka_torch loads ViT exports, not {config.get('arch')}")
    args = {k: config[k] for k in VIT_ARGS if k in config}
    return VisionTransformer(**args, num_classes=0, dynamic_img_size=True)


def read_weights(path):
    path = Path(path)
    if path.suffix == ".safetensors":
        return load_file(str(path))
    state = torch.load(str(path), map_location="cpu", weights_only=True)
    return state.get("state_dict", state.get("model", state))


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def load(export_dir, backbone_weights=None):
    """The exported run as an `nn.Module` in eval mode (see the module docs)."""
    d = Path(export_dir)
    meta = json.loads((d / "dka_export.json").read_text())
    if meta.get("format") != "dka-torch":
        raise ValueError(f"{d}: not a `dka export --format torch` folder")
    vit = vit_from(meta["backbone"]["config"])
    if (d / "backbone.safetensors").exists():
        vit.load_state_dict(load_file(str(d / "backbone.safetensors")), strict=True)
    elif backbone_weights is not None:
        want = (meta.get("backbone_weights") or {}).get("sha256")
        if want and Path(backbone_weights).suffix == ".safetensors" and sha256(backbone_weights) != want:
            print(f"warning: {backbone_weights} is not the file the run trained on "
                  f"(sha256 {want[:12]}…)", file=sys.stderr)
        state = {k: v for k, v in read_weights(backbone_weights).items() if not k.startswith("head.")}
        missing, unused = vit.load_state_dict(state, strict=False)
        if missing:
            raise ValueError(f"{backbone_weights}: missing {missing[:5]}…")
    else:
        raise ValueError(f"{d}: the backbone's weights are not in the export: pass backbone_weights "
                         f"(the run used {meta.get('backbone_weights')})")
    tensors = load_file(str(d / "model.safetensors"))
    trained = {k[len("backbone."):]: v for k, v in tensors.items() if k.startswith("backbone.")}
    if trained:
        missing, unused = vit.load_state_dict(trained, strict=False)
        if unused:
            raise ValueError(f"{d}: trained backbone tensors the ViT does not have: {unused[:5]}")
    built = {}

    def module(desc):
        key = desc.get("prefix") or json.dumps(desc, sort_keys=True)
        if key not in built:  # one instance per prefix: DKA's "mona" shares one per block
            built[key] = KINDS[desc["kind"]](desc, tensors)
        return built[key]

    sites = [{name: module(desc) for name, desc in block.items()} for block in meta["sites"]["blocks"]]
    prompts = meta["sites"].get("prompts")
    prompts = tensors[prompts["name"]] if prompts else None
    model = DkaModel(vit, sites, prompts, meta["head"], tensors, meta["head"]["segmentation"])
    return model.eval()


def check(export_dir):
    """Max |logits - dka's logits| on the export's check batch, loading the export through the
    library its format is for: this module (torch), peft (peft) or timm alone (merged)."""
    d = Path(export_dir)
    ref = load_file(str(d / "check.safetensors"))
    meta = json.loads((d / "dka_export.json").read_text())
    fmt = meta["format"]
    if fmt == "dka-torch":
        model = load(d)
    elif fmt == "peft":
        from peft import PeftModel
        vit = vit_from(meta["backbone"]["config"])
        vit.reset_classifier(len(meta["classes"]))
        base = {k: v for k, v in load_file(str(d / "base_model.safetensors")).items()}
        missing, _ = vit.load_state_dict(base, strict=False)
        assert set(missing) <= {"head.weight", "head.bias"}, missing
        model = PeftModel.from_pretrained(vit, str(d))
    elif fmt == "merged":
        from timm.models.vision_transformer import VisionTransformer
        cfg = json.loads((d / "config.json").read_text())
        args = {k: cfg["model_args"][k] for k in VIT_ARGS if k in cfg["model_args"]}
        model = VisionTransformer(**args, num_classes=cfg["num_classes"], dynamic_img_size=True)
        model.load_state_dict(load_file(str(d / "model.safetensors")), strict=True)
    else:
        raise ValueError(f"{d}: unknown format {fmt}")
    model.eval()
    with torch.no_grad():
        out = model(ref["input"])
    return (out - ref["logits"]).abs().max().item()


def main(argv):
    if len(argv) < 2 or argv[0] != "check":
        print(__doc__)
        return 2
    worst = 0.0
    for d in argv[1:]:
        diff = check(d)
        worst = max(worst, diff)
        print(f"{d}\t{json.loads((Path(d) / 'dka_export.json').read_text())['format']}\t{diff:.3e}")
    return 0 if worst <= TOLERANCE else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
