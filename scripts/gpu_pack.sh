#!/usr/bin/env bash
# Packs what a GPU machine without a Rust toolchain or network needs to run `just gpu-check` and
# `just bench device=cuda`: `.gpu/dka` (this build's binary, stripped: the debug build with its
# line tables is over 64 MiB, a stripped one about 17 MiB), `.gpu/BUILD` (the commit and the
# machine it was built on) and the parity fixtures (`fixtures/`). On the GPU machine, from the
# repository root, `scripts/gpu_device.sh` runs the checks with that machine's PyTorch.
#
#   just gpu-pack      (builds and writes the fixtures first), then carry `.gpu` and `fixtures`
#                      (both git-ignored, ~20 MiB)
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x target/debug/dka ] || [ ! -d fixtures ]; then
    echo "gpu_pack: no target/debug/dka or fixtures/: run 'just gpu-pack' (it builds and writes them first)" >&2
    exit 1
fi
rm -rf .gpu
mkdir -p .gpu
cp target/debug/dka .gpu/dka
strip .gpu/dka
{
    echo "commit: $(git rev-parse --short HEAD 2>/dev/null || echo unknown)$(git diff --quiet HEAD 2>/dev/null || echo ' (with uncommitted changes)')"
    echo "built: $(date -u +%Y-%m-%dT%H:%M:%SZ) on $(uname -m), $(ldd --version 2>/dev/null | head -n 1)"
    # The newest C and C++ runtime versions the binary needs (the GPU machine's must be as new).
    echo "needs: $(objdump -T .gpu/dka 2>/dev/null | grep -o 'GLIBC_[0-9.]*' | sort -uV | tail -n 1), $(objdump -T .gpu/dka 2>/dev/null | grep -o 'GLIBCXX_[0-9.]*' | sort -uV | tail -n 1)"
    echo "libtorch: $(.venv/bin/python -c 'import torch; print(torch.__version__)' 2>/dev/null || echo unknown)"
} >.gpu/BUILD
# A device call carries the working tree and these paths, 64 MiB in all.
carried=$(du -sb .gpu fixtures | awk '{s += $1} END {print int(s / 1048576)}')
tree=$(git ls-files -z --cached --others --exclude-standard | xargs -0 du -cb 2>/dev/null | tail -n 1 | awk '{print int($1 / 1048576)}')
echo "gpu_pack: .gpu/dka ($(du -h .gpu/dka | cut -f1)) and fixtures/ ready: ${carried} MiB to carry beside the working tree's ${tree} MiB."
cat .gpu/BUILD
if [ $((carried + tree)) -ge 62 ]; then
    echo "gpu_pack: $((carried + tree)) MiB is too close to the 64 MiB a device call carries" >&2
    exit 1
fi
echo "On the GPU machine (repository root, carrying .gpu and fixtures): bash scripts/gpu_device.sh"
