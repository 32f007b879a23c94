"""The PyTorch-eager reference of `dka bench steps`: the training step a researcher would write
with timm and plain PyTorch, driven line by line by the Rust bench.

What it builds (METHODS.md, nothing clever):
  - the timm backbone (`timm.create_model`, frozen, eval mode), a task head (Linear; for
    segmentation Segmenter's linear decoder: per-patch Linear, bilinear upsampling);
  - LoRA by hand on the q and v slices of each fused `qkv` (as LoRA-ViT code does:
    `qkv[..., :d] += B_q A_q x`, `qkv[..., -d:] += B_v A_v x`, scale alpha/r);
  - Adapter (Houlsby): `h + Up(GELU(Down h))` on the attention and the MLP branch outputs;
  - DKA: `x + Up(GELU(DWConv_51(z) + DWConv_5(z)))`, z = GELU(Down x) (the authors' variant),
    two `nn.Conv2d(groups=d̂)` with full kernels in NCHW, the CLS token skipping the convs;
    "mona" placement (one instance after the attention and after the MLP of each block);
    on a ResNet, the same module with 1x1 convs after every bottleneck;
  - Adam with the authors' two groups (head 1e-4, adapter 1e-3), gradient clipping 1.0.

The weights, the input batch and the targets come from the Rust side (a safetensors file with
`backbone/<timm name>`, `adapter/<dka name>`, `head/<name>`, `input`, `target`), so both
implementations start from the same numbers and their losses can be compared.

Protocol: one JSON object per line on stdin, one JSON reply per line on stdout (logs go to
stderr). Commands: setup, step, reset_peak, memory, gemm, quit (see `handle`).
"""
import json
import math
import os
import re
import resource
import sys
import time

import timm
import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import load_file
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import flop_registry


def log(msg):
    print(f"[reference] {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------- modules (METHODS.md)


class Dka(nn.Module):
    """`x + Up(drop(GELU(DW_L(z) + DW_S(z))))`, z = GELU(Down x) (authors) or Down x (paper)."""

    def __init__(self, dim, cfg):
        super().__init__()
        d, bias = cfg["d_hat"], cfg["bias"]
        kl, ks = cfg["large_kernel"], cfg["small_kernel"]
        self.authors = cfg["activation"] == "authors"
        self.down = nn.Linear(dim, d, bias=bias)
        self.up = nn.Linear(d, dim, bias=bias)
        self.conv_large = nn.Conv2d(d, d, kl, padding=kl // 2, groups=d, bias=bias)
        self.conv_small = nn.Conv2d(d, d, ks, padding=ks // 2, groups=d, bias=bias)
        self.act = nn.GELU()
        self.drop = nn.Dropout(cfg["dropout"])

    def forward(self, x, h, w, prefix):
        """`x: [B, prefix + h*w, D]`."""
        b = x.shape[0]
        z = self.down(x)
        if self.authors:
            z = self.act(z)
        pre, p = z[:, :prefix], z[:, prefix:]
        p = self.convs(p.transpose(1, 2).reshape(b, -1, h, w))
        p = p.flatten(2).transpose(1, 2)
        y = torch.cat([pre, p], dim=1)
        return x + self.up(self.drop(self.act(y)))

    def convs(self, p):
        """The two depthwise convolutions on the map `[B, d̂, h, w]`, summed."""
        return self.conv_large(p) + self.conv_small(p)


class Dka2d(nn.Module):
    """DKA on a CNN map `[B, C, H, W]`: Down/Up as 1x1 convs."""

    def __init__(self, dim, cfg):
        super().__init__()
        d, bias = cfg["d_hat"], cfg["bias"]
        kl, ks = cfg["large_kernel"], cfg["small_kernel"]
        self.authors = cfg["activation"] == "authors"
        self.down = nn.Conv2d(dim, d, 1, bias=bias)
        self.up = nn.Conv2d(d, dim, 1, bias=bias)
        self.conv_large = nn.Conv2d(d, d, kl, padding=kl // 2, groups=d, bias=bias)
        self.conv_small = nn.Conv2d(d, d, ks, padding=ks // 2, groups=d, bias=bias)
        self.act = nn.GELU()
        self.drop = nn.Dropout(cfg["dropout"])

    def forward(self, x):
        z = self.down(x)
        if self.authors:
            z = self.act(z)
        y = self.conv_large(z) + self.conv_small(z)
        return x + self.up(self.drop(self.act(y)))


class MonaBlock(nn.Module):
    """A timm ViT block with one DKA after the attention and after the MLP (shared)."""

    def __init__(self, blk, dka, grid, prefix):
        super().__init__()
        self.blk, self.dka, self.grid, self.prefix = blk, dka, grid, prefix

    def forward(self, x):
        b = self.blk
        h, w = self.grid
        x = x + b.drop_path1(b.ls1(b.attn(b.norm1(x))))
        x = self.dka(x, h, w, self.prefix)
        x = x + b.drop_path2(b.ls2(b.mlp(b.norm2(x))))
        return self.dka(x, h, w, self.prefix)


class Adapter(nn.Module):
    """Houlsby: `h + Up(GELU(Down h))`."""

    def __init__(self, dim, hidden):
        super().__init__()
        self.down = nn.Linear(dim, hidden)
        self.up = nn.Linear(hidden, dim)

    def forward(self, h):
        return h + self.up(F.gelu(self.down(h)))


class LoraQkv(nn.Module):
    """A frozen fused qkv Linear plus `(alpha/r) B A x` on its q and v slices."""

    def __init__(self, qkv, r, alpha):
        super().__init__()
        self.qkv = qkv
        d = qkv.in_features
        self.dim = d
        self.scale = alpha / r
        self.lora_A_q = nn.Linear(d, r, bias=False)
        self.lora_B_q = nn.Linear(r, d, bias=False)
        self.lora_A_v = nn.Linear(d, r, bias=False)
        self.lora_B_v = nn.Linear(r, d, bias=False)

    def forward(self, x):
        qkv = self.qkv(x)
        d = self.dim
        qkv[..., :d] += self.scale * self.lora_B_q(self.lora_A_q(x))
        qkv[..., -d:] += self.scale * self.lora_B_v(self.lora_A_v(x))
        return qkv


# ---------------------------------------------------------------- the model of one case


class Model(nn.Module):
    def __init__(self, case):
        super().__init__()
        self.kind = case["kind"]
        method = case["method"]
        self.method = method["name"]
        self.adapters = {}  # name (as the Rust side's) -> module
        self.adapter_modules = nn.ModuleList()  # the same modules, registered
        self.prefix = 0
        if self.kind == "stack":
            s = case["stack"]
            self.backbone = None
            self.grid = (s["h"], s["w"])
            self.layers = nn.ModuleList(Dka(s["dim"], method) for _ in range(s["layers"]))
            for i, m in enumerate(self.layers):
                self._add(f"blocks.{i}.dka", m)
            self.head = None
            return
        bb = case["backbone"]
        self.arch = bb.get("arch", "vit")
        kwargs = {"num_classes": 0, "pretrained": False}
        kwargs.update(case.get("timm_kwargs", {}))
        self.backbone = timm.create_model(case["timm"], **kwargs)
        self.backbone.requires_grad_(False)
        self.backbone.eval()
        if self.arch == "vit":
            self.prefix = self.backbone.num_prefix_tokens
            self.grid = tuple(self.backbone.patch_embed.grid_size)
            self._attach_vit(method)
        elif self.arch == "resnet":
            self._attach_resnet(method)
        else:
            raise ValueError(f"unsupported arch {self.arch}")
        feat = self.backbone.num_features
        self.head = nn.Linear(feat, case["classes"])

    def _add(self, name, module):
        self.adapters[name] = module
        self.adapter_modules.append(module)

    def _attach_vit(self, m):
        blocks = self.backbone.blocks
        dim = self.backbone.embed_dim
        for i, blk in enumerate(blocks):
            if self.method == "dka":
                assert m["placement"] == "mona", "the reference implements mona placement"
                dka = Dka(dim, m)
                self._add(f"blocks.{i}.dka", dka)
                blocks[i] = MonaBlock(blk, dka, self.grid, self.prefix)
            elif self.method == "adapter":
                a1, a2 = Adapter(dim, m["dim"]), Adapter(dim, m["dim"])
                self._add(f"blocks.{i}.adapter_attn", a1)
                self._add(f"blocks.{i}.adapter_mlp", a2)
                blk.ls1 = nn.Sequential(blk.ls1, a1)
                blk.ls2 = nn.Sequential(blk.ls2, a2)
            elif self.method == "lora":
                assert m["targets"] == ["qkv"] and m["qkv_parts"] == "qv", m
                lq = LoraQkv(blk.attn.qkv, m["r"], m["alpha"])
                self._add(f"blocks.{i}.attn.qkv", lq)
                blk.attn.qkv = lq
            elif self.method != "linear":
                raise ValueError(f"the reference has no {self.method}")

    def _attach_resnet(self, m):
        assert self.method == "dka", "the reference adapts ResNets with DKA only"
        for k in range(1, 5):
            layer = getattr(self.backbone, f"layer{k}")
            for i in range(len(layer)):
                blk = layer[i]
                dka = Dka2d(blk.conv3.out_channels, m)
                self._add(f"layer{k}.{i}.dka", dka)
                layer[i] = nn.Sequential(blk, dka)

    def loss(self, x, y):
        if self.kind == "stack":
            h, w = self.grid
            for m in self.layers:
                x = m(m(x, h, w, 0), h, w, 0)
            return x.square().mean()
        f = self.backbone.forward_features(x)
        if self.kind == "classify":
            logits = self.head(self.backbone.forward_head(f, pre_logits=True))
        else:  # segment: Segmenter's linear decoder on the patch tokens
            h, w = self.grid
            t = self.head(f[:, self.prefix :])
            t = t.transpose(1, 2).reshape(t.shape[0], -1, h, w)
            logits = F.interpolate(t, size=x.shape[-2:], mode="bilinear", align_corners=False)
        return F.cross_entropy(logits, y)

    def load(self, tensors):
        """Weights from the Rust side; every tensor must find its place."""
        bb = {k[len("backbone/") :]: v for k, v in tensors.items() if k.startswith("backbone/")}
        if self.backbone is not None:
            sd = self.backbone.state_dict()
            # timm names with wrappers in between (MonaBlock.blk, Sequential(block, dka), LoraQkv.qkv)
            own = {}
            for name in sd:
                plain = re.sub(r"\.blk\.", ".", name)
                plain = re.sub(r"^(layer\d\.\d+)\.0\.", r"\1.", plain)
                plain = plain.replace(".qkv.qkv.", ".qkv.")
                own[plain] = name
            missing = [n for n in own if n not in bb and not n.endswith("num_batches_tracked")]
            adapter_like = [n for n in missing if self._is_adapter_key(own[n])]
            missing = [n for n in missing if n not in adapter_like]
            unused = [n for n in bb if n not in own]
            if missing or unused:
                raise ValueError(f"backbone weights: missing {missing[:5]}, unused {unused[:5]}")
            with torch.no_grad():
                for plain, v in bb.items():
                    sd[own[plain]].copy_(v)
        ad = {k[len("adapter/") :]: v for k, v in tensors.items() if k.startswith("adapter/")}
        want = {}
        for prefix, mod in self.adapters.items():
            for n, p in mod.named_parameters():
                if n.startswith("qkv."):
                    continue  # the frozen Linear inside LoraQkv
                want[f"{prefix}.{n}"] = p
        if set(want) != set(ad):
            raise ValueError(
                f"adapter weights: missing {sorted(set(want) - set(ad))[:5]}, "
                f"unused {sorted(set(ad) - set(want))[:5]}"
            )
        with torch.no_grad():
            for n, p in want.items():
                p.copy_(ad[n].reshape(p.shape))
            if self.head is not None:
                self.head.weight.copy_(tensors["head/task_head.weight"])
                self.head.bias.copy_(tensors["head/task_head.bias"])

    @staticmethod
    def _is_adapter_key(name):
        return any(s in name for s in (".dka.", ".lora_", "ls1.1.", "ls2.1.")) or re.search(
            r"^layer\d\.\d+\.1\.", name
        )

    def groups(self):
        head = list(self.head.parameters()) if self.head is not None else []
        adapter = [p for p in self.adapter_modules.parameters() if p.requires_grad]
        return head, adapter


# ---------------------------------------------------------------- FLOP counting


class FlopCount(TorchDispatchMode):
    """FLOPs of matmuls, attention and convolutions, split into GEMM-like work and depthwise
    convolutions (groups > 1). Matmuls and attention use PyTorch's flop formulas; convolutions
    are counted here (2 x output elements x input channels per group x kernel taps, once per
    computed gradient), because PyTorch's formula for the weight gradient ignores groups and
    overcounts a depthwise convolution by its channel count."""

    def __init__(self):
        super().__init__()
        self.dense = 0
        self.depthwise = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        name = str(func._overloadpacket)
        flops, groups = 0, 1
        if name in ("aten.convolution", "aten._convolution"):
            w, groups = args[1], args[8]
            flops = 2 * out.numel() * math.prod(w.shape[1:])
        elif name == "aten.convolution_backward":
            grad_out, w, groups, mask = args[0], args[2], args[9], args[10]
            flops = 2 * grad_out.numel() * math.prod(w.shape[1:]) * (int(mask[0]) + int(mask[1]))
        elif func._overloadpacket in flop_registry:
            flops = flop_registry[func._overloadpacket](*args, **kwargs, out_val=out)
        elif name == "aten._scaled_dot_product_flash_attention_for_cpu":
            q, k, v = args[:3]
            b, h, n, e = q.shape
            flops = 2 * b * h * n * k.shape[-2] * (e + v.shape[-1])
        elif name == "aten._scaled_dot_product_flash_attention_for_cpu_backward":
            # grad_out, q, k, v, ...: dP, dV, dQ, dK (flop_counter's convention, no recompute)
            q, k, v = args[1:4]
            b, h, n, e = q.shape
            flops = 2 * 2 * b * h * n * k.shape[-2] * (e + v.shape[-1])
        if groups > 1:
            self.depthwise += flops
        else:
            self.dense += flops
        return out


# ---------------------------------------------------------------- memory


def _status(field):
    with open("/proc/self/status") as f:
        m = re.search(rf"^{field}:\s+(\d+) kB", f.read(), re.M)
    return int(m.group(1)) * 1024 if m else None


def reset_peak(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        return True
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM to the current resident set
        return True
    except OSError:
        return False


def memory(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        return {
            "peak_bytes": torch.cuda.max_memory_allocated(device),
            "now_bytes": torch.cuda.memory_allocated(device),
            "rss_bytes": _status("VmRSS"),
        }
    return {"peak_bytes": _status("VmHWM"), "now_bytes": _status("VmRSS"), "rss_bytes": _status("VmRSS")}


# ---------------------------------------------------------------- the worker


class Worker:
    def __init__(self):
        self.model = None
        self.device = torch.device("cpu")

    def sync(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def setup(self, req):
        self.device = torch.device(req.get("device", "cpu"))
        torch.manual_seed(0)
        case = req["case"]
        tensors = load_file(req["file"])
        model = Model(case)
        model.load(tensors)
        self.model = model.to(self.device)
        self.x = tensors["input"].to(self.device)
        self.y = tensors["target"].to(self.device)
        del tensors
        head, adapter = self.model.groups()
        groups = []
        if head:
            groups.append({"params": head, "lr": case["head_lr"]})
        if adapter:
            groups.append({"params": adapter, "lr": case["adapter_lr"]})
        self.params = head + adapter
        self.clip = case.get("clip_grad_norm")
        # bf16: the forward in autocast (weights, gradients and Adam's state stay fp32).
        self.bf16 = case.get("precision", "fp32") == "bf16"
        self.opt = torch.optim.Adam(groups, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)
        self.sync()
        return {"trainable": sum(p.numel() for p in self.params)}

    def step(self, req):
        faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        count = FlopCount() if req.get("count_flops") else None
        self.sync()
        t0 = time.perf_counter()
        if count:
            count.__enter__()
        try:
            self.opt.zero_grad(set_to_none=True)
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
                loss = self.model.loss(self.x, self.y)
            loss.backward()
            if self.clip is not None:
                torch.nn.utils.clip_grad_norm_(self.params, self.clip)
            self.opt.step()
        finally:
            if count:
                count.__exit__(None, None, None)
        self.sync()
        ms = (time.perf_counter() - t0) * 1e3
        self.steps = getattr(self, "steps", 0) + 1
        if not math.isfinite(loss.item()):
            raise FloatingPointError(f"the loss of step {self.steps} is {loss.item()}")
        out = {"loss": loss.item(), "ms": ms,
               "page_faults": resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults}
        if count:
            out["flops_dense"] = count.dense
            out["flops_depthwise"] = count.depthwise
        return out

    def profile(self, req):
        """`steps` training steps under torch.profiler (CPU activities, input shapes), its
        Chrome trace written to `out`."""
        acts = [torch.profiler.ProfilerActivity.CPU]
        if self.device.type == "cuda":
            acts.append(torch.profiler.ProfilerActivity.CUDA)
        ms = []
        with torch.profiler.profile(activities=acts, record_shapes=True) as prof:
            for _ in range(max(1, req.get("steps", 3))):
                ms.append(self.step({})["ms"])
        prof.export_chrome_trace(req["out"])
        return {"ms": ms, "trace": req["out"]}

    def gemm(self, req):
        n, reps = req.get("n", 2048), req.get("reps", 5)
        self.device = torch.device(req.get("device", "cpu"))
        dtype = torch.bfloat16 if req.get("bf16") else torch.float32
        a = torch.randn(n, n, device=self.device, dtype=dtype)
        b = torch.randn(n, n, device=self.device, dtype=dtype)
        a @ b
        ts = []
        for _ in range(reps):
            self.sync()
            t0 = time.perf_counter()
            a @ b
            self.sync()
            ts.append(time.perf_counter() - t0)
        ts.sort()
        return {"gflops": 2 * n**3 / ts[len(ts) // 2] / 1e9}

    def handle(self, req):
        cmd = req["cmd"]
        if cmd == "setup":
            return self.setup(req)
        if cmd == "step":
            return self.step(req)
        if cmd == "reset_peak":
            return {"reset": reset_peak(self.device)}
        if cmd == "memory":
            return memory(self.device)
        if cmd == "gemm":
            return self.gemm(req)
        if cmd == "profile":
            return self.profile(req)
        if cmd == "info":
            return {
                "torch": torch.__version__,
                "timm": timm.__version__,
                "threads": torch.get_num_threads(),
                "cuda": torch.cuda.is_available(),
            }
        raise ValueError(f"unknown command {cmd}")


def main():
    if os.environ.get("DKA_BENCH_FLUSH_DENORMAL"):
        torch.set_flush_denormal(True)  # before the thread pool starts, so its threads inherit it
    w = Worker()
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        if not line.strip():
            continue
        req = json.loads(line)
        if req.get("cmd") == "quit":
            break
        try:
            reply = w.handle(req)
            reply["ok"] = True
        except Exception as e:  # the driver reports it and stops the case
            import traceback

            traceback.print_exc(file=sys.stderr)
            reply = {"ok": False, "error": f"{type(e).__name__}: {e}"}
        print(json.dumps(reply), flush=True)


if __name__ == "__main__":
    main()
