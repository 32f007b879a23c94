#!/usr/bin/env bash
# Installs the pinned Python environment (.venv) and links .libtorch to its PyTorch.
# Idempotent: a second run only checks a stamp and the link, and takes about a second.
#
#   scripts/setup.sh                 keep the installed PyTorch variant (first time: the default)
#   scripts/setup.sh cuda=VARIANT    install PyTorch 2.11.0 built for VARIANT:
#     default  PyPI's wheel (CUDA 13.0; what CI and the GPU machines use): NVIDIA driver >= 580
#     cu130    the same wheel
#     cu128    CUDA 12.8 from the PyTorch wheel index: driver >= 525.60 (CUDA 12 minor-version
#              compatibility; >= 570 for every feature)
#     cu126    CUDA 12.6 from the PyTorch wheel index: driver >= 525.60
#     cpu      no CUDA (smaller download)
# `nvidia-smi` prints the driver version (top right). A variant change rebuilds libtorch's
# bindings on the next cargo build.
set -euo pipefail
cd "$(dirname "$0")/.."

variant=""
for arg in "$@"; do
    case "$arg" in
        cuda=) ;;
        cuda=*) variant=${arg#cuda=} ;;
        *) echo "setup: unknown argument '$arg' (use cuda=default|cu130|cu128|cu126|cpu)" >&2; exit 2 ;;
    esac
done
case "$variant" in
    ""|default|cu130|cu128|cu126|cpu) ;;
    *) echo "setup: cuda=$variant is not a PyTorch 2.11.0 variant: use default (= cu130), cu128, cu126 or cpu" >&2; exit 2 ;;
esac
[ "$variant" = cu130 ] && variant=default
installed=$(cat .venv/.dka-cuda 2>/dev/null || echo default)
[ -z "$variant" ] && variant=$installed

req=python/requirements.txt
uv_version=0.13.9
stamp=.venv/.dka-setup-$( (cat "$req"; echo "$variant") | sha256sum | cut -c1-16)

if [ ! -f "$stamp" ]; then
    if [ ! -x .venv/bin/python ]; then
        echo "setup: creating .venv"
        python3 -m venv .venv
    fi
    pip=(.venv/bin/python -m pip install --quiet --disable-pip-version-check)
    if [ "$variant" = default ]; then
        echo "setup: installing $req into .venv (PyTorch is ~4.6 GB)"
        if [ "$installed" != default ]; then
            # Another variant's 2.11.0 satisfies `torch==2.11.0`: replace it explicitly.
            "${pip[@]}" --force-reinstall --no-deps torch==2.11.0 --index-url https://pypi.org/simple
        fi
        # uv (pinned, from PyPI) installs the same pinned wheels as pip, downloading and
        # unpacking them in parallel and skipping pip's byte-compilation: 20 s instead of 78 s on
        # a fresh 2-core machine (no cache either way). pip does it where uv cannot be
        # installed or fails. uv reads its own settings: pip's index, extra index and
        # find-links given in the environment are passed on (a pip.conf is not).
        for v in INDEX_URL EXTRA_INDEX_URL FIND_LINKS; do
            pv=PIP_$v uvv=UV_$v
            if [ -n "${!pv:-}" ] && [ -z "${!uvv:-}" ]; then export "$uvv=${!pv}"; fi
        done
        if "${pip[@]}" "uv==$uv_version" 2>/dev/null \
            && .venv/bin/uv pip install --quiet --no-cache --python .venv/bin/python -r "$req"; then
            :
        else
            echo "setup: uv $uv_version could not install $req; installing with pip (slower)"
            "${pip[@]}" -r "$req"
        fi
    else
        echo "setup: installing PyTorch 2.11.0 ($variant) from https://download.pytorch.org/whl/$variant, then the rest of $req"
        "${pip[@]}" --force-reinstall --no-deps torch==2.11.0 --index-url "https://download.pytorch.org/whl/$variant"
        "${pip[@]}" torch==2.11.0 --index-url "https://download.pytorch.org/whl/$variant" --extra-index-url https://pypi.org/simple
        # Everything else pinned, but CUDA 13's header package: CUDA 12 wheels take their crt/
        # headers (which the C++ shim needs) from nvcc's package.
        grep -vE '^(torch|nvidia-cuda-crt)==' "$req" > .venv/requirements-rest.txt
        "${pip[@]}" -r .venv/requirements-rest.txt
        case "$variant" in
            cu126) "${pip[@]}" nvidia-cuda-nvcc-cu12==12.6.85 ;;
            cu128) "${pip[@]}" nvidia-cuda-nvcc-cu12==12.8.93 ;;
        esac
    fi
    rm -f .venv/.dka-setup-*
    touch "$stamp"
    if [ "$variant" != "$installed" ]; then
        echo "$variant" > .venv/.dka-cuda
        # torch-sys only rebuilds when LIBTORCH's value changes, and .libtorch is the same path.
        if command -v cargo >/dev/null && [ -d target ]; then
            echo "setup: PyTorch variant $installed -> $variant: cleaning libtorch's bindings so that they rebuild"
            cargo clean -p torch-sys -p tch >/dev/null 2>&1 || true
        fi
    fi
fi

torch_dir=$(.venv/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/torch
if [ ! -f "$torch_dir/lib/libtorch_cpu.so" ]; then
    echo "setup: $torch_dir/lib/libtorch_cpu.so is missing; remove .venv and run 'just setup' again" >&2
    exit 1
fi
if [ "$(readlink .libtorch 2>/dev/null)" != "$torch_dir" ]; then
    ln -sfn "$torch_dir" .libtorch
    echo "setup: .libtorch -> $torch_dir"
fi
