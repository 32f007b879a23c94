#!/usr/bin/env bash
# Installs a prebuilt `just` from PyPI (the `rust-just` wheel, a few seconds) into its own
# virtual environment and links it as ~/.local/bin/just; `cargo install just --locked` builds
# the same program from source (about two minutes on 2 cores). Falls back to cargo when the
# wheel cannot be installed.
#
#   bash scripts/get-just.sh && just demo        (~/.local/bin must be on PATH)
set -euo pipefail
version=1.59.0
venv="${XDG_DATA_HOME:-$HOME/.local/share}/dka-just"
bin="$HOME/.local/bin"
mkdir -p "$bin"
if python3 -m venv "$venv" 2>/dev/null \
    && "$venv/bin/python" -m pip install --quiet --disable-pip-version-check "rust-just==$version"; then
    ln -sf "$venv/bin/just" "$bin/just"
    echo "get-just: just $version (prebuilt, PyPI's rust-just) linked as $bin/just"
else
    echo "get-just: the prebuilt wheel could not be installed; building just with cargo" >&2
    cargo install just --locked
fi
case ":$PATH:" in
    *":$bin:"*) ;;
    *) echo "get-just: add $bin to PATH (export PATH=\"$bin:\$PATH\")" >&2 ;;
esac
