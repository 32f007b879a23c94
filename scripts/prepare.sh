#!/usr/bin/env bash
# What `just demo` needs before it runs, prepared side by side: the same result as
# `just setup build fixtures assets` one after another, in less wall time on a fresh machine.
#
#   1. `just setup` (PyTorch's wheels: mostly download and unpacking) while cargo already
#      compiles every crate that does not need libtorch (`cargo build --keep-going`: the crates
#      that need it fail to build until `.libtorch` exists, and are built in step 2);
#   2. the workspace build while the parity fixtures (Python) and the assets (downloads) are
#      written.
# On a machine that is already set up this is `just build fixtures assets` (seconds).
#
#   scripts/prepare.sh [cuda=VARIANT]     (arguments go to scripts/setup.sh)
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p target
started=$(date +%s)
early_log=target/prepare-early-build.log

# A first build has no incremental state to reuse, and keeping it costs about 10 % of the
# workspace crates' compile time on 2 cores (measured: 100-103 s against 109-114 s); later
# builds are incremental again (the setting does not invalidate what this one builds).
if [ ! -x target/debug/dka ]; then
    export CARGO_INCREMENTAL=0
fi

early=""
if [ ! -e .libtorch ]; then
    echo "prepare: compiling the crates that do not need libtorch while PyTorch installs (log: $early_log)"
    cargo build --workspace --keep-going >"$early_log" 2>&1 &
    early=$!
fi
if ! scripts/setup.sh "$@"; then
    [ -n "$early" ] && kill "$early" 2>/dev/null
    exit 1
fi
echo "prepare: set-up done after $(( $(date +%s) - started )) s"

# Fixtures and assets need the Python environment, not the build.
.venv/bin/python python/make_fixtures.py fixtures >target/prepare-fixtures.log 2>&1 &
fixtures=$!
scripts/assets.sh >target/prepare-assets.log 2>&1 &
assets=$!

# The early build ends with errors where libtorch was missing: what it compiled is kept.
[ -n "$early" ] && { wait "$early" || true; }
cargo build --workspace
echo "prepare: build done after $(( $(date +%s) - started )) s"

status=0
wait "$fixtures" || { echo "prepare: writing the fixtures failed:" >&2; tail -n 20 target/prepare-fixtures.log >&2; status=1; }
wait "$assets" || { echo "prepare: fetching the assets failed:" >&2; tail -n 20 target/prepare-assets.log >&2; status=1; }
[ "$status" = 0 ] || exit 1
tail -n 3 target/prepare-assets.log
echo "prepare: ready after $(( $(date +%s) - started )) s"
