#!/usr/bin/env bash
# Installs the pinned Python environment (.venv) and links .libtorch to its PyTorch.
# Idempotent: a second run only checks a stamp and the link, and takes about a second.
set -euo pipefail
cd "$(dirname "$0")/.."

req=python/requirements.txt
stamp=.venv/.dka-setup-$(sha256sum "$req" | cut -c1-16)

if [ ! -f "$stamp" ]; then
    if [ ! -x .venv/bin/python ]; then
        echo "setup: creating .venv"
        python3 -m venv .venv
    fi
    echo "setup: installing $req into .venv (PyTorch is ~4.6 GB; a few minutes the first time)"
    .venv/bin/python -m pip install --quiet --disable-pip-version-check -r "$req"
    rm -f .venv/.dka-setup-*
    touch "$stamp"
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
