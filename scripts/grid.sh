#!/usr/bin/env bash
# Runs experiment grids with the justfile's arguments, every grid even when one has failed
# runs (the exit status says whether any did):
#
#   scripts/grid.sh EXPERIMENT.toml... -- [key=value...]
#
# Keys (later ones win, so `just profile=quick reproduce-table2` and
# `just reproduce-table2 profile=quick` mean the same):
#   data=DIR | data=NAME=PATH,NAME=PATH   a folder with one sub-folder per dataset name, or pairs
#   weights=FILE.safetensors | none       pretrained backbone weights (none: random-init control),
#     or BACKBONE=FILE,BACKBONE=FILE      one file per backbone (Table 1: resnet50=...,medsam_vit_b=...)
#   profile=quick|paper|...               a profile of the experiment files
#   device=auto|cpu|cuda|cuda:N
#   out=DIR                               output folder (one experiment only)
#   shard=I/N  retry=1  dry=1  cache=DIR
#   plan=1                                print the runs still to do and an estimate of their
#                                         time on this device (datasets absent: nominal sizes)
# `quick` needs no data: it uses synthetic images and the registry MRI (made/fetched here).
set -euo pipefail
cd "$(dirname "$0")/.."

exps=()
while [ $# -gt 0 ] && [ "$1" != "--" ]; do exps+=("$1"); shift; done
[ $# -gt 0 ] && shift
known="data weights profile device out shard retry dry cache plan"
declare -A kv=()
for arg in "$@"; do
    key=${arg%%=*}
    if [ "$key" = "$arg" ] || [[ " $known " != *" $key "* ]]; then
        echo "error: unknown argument '$arg': use key=value with key one of: $known" >&2
        exit 2
    fi
    val=${arg#*=}
    # Empty values (the justfile's unset variables) keep what an earlier argument set.
    if [ -n "$val" ]; then kv[$key]=$val; fi
done

data=${kv[data]:-} profile=${kv[profile]:-}
common=()
if [ -n "$profile" ]; then common+=(--profile "$profile"); fi
case "$profile" in
    quick|demo)
        scripts/assets.sh
        if [ -z "$data" ]; then
            [ -d .assets/synthetic ] || target/debug/dka data synth --out .assets/synthetic --classes 3 --per-class 40 --size 32
            data="folder=.assets/synthetic,mni152=.assets/mni152"
        fi
        ;;
esac
if [ -z "$data" ] && [ "${kv[plan]:-0}" != 0 ]; then
    common+=(--data-dir /nonexistent)
elif [ -z "$data" ]; then
    echo "error: data= is required: a folder with one sub-folder per dataset, or NAME=PATH,... (see README)" >&2
    exit 2
elif [ -d "$data" ]; then
    common+=(--data-dir "$data")
else
    IFS=, read -ra pairs <<< "$data"
    for p in "${pairs[@]}"; do common+=(--data "$p"); done
fi
if [ -n "${kv[weights]:-}" ]; then
    # FILE, none, or BACKBONE=FILE,BACKBONE=FILE (Table 1: one file per backbone).
    IFS=, read -ra ws <<< "${kv[weights]}"
    for w in "${ws[@]}"; do common+=(--weights "$w"); done
fi
[ -n "${kv[device]:-}" ] && common+=(--device "${kv[device]}")
[ -n "${kv[cache]:-}" ] && common+=(--cache-dir "${kv[cache]}")
if [ -n "${kv[out]:-}" ]; then
    if [ ${#exps[@]} -ne 1 ]; then echo "error: out= needs a single experiment" >&2; exit 2; fi
    common+=(--out "${kv[out]}")
fi
if [ "${kv[plan]:-0}" != 0 ]; then
    exec target/debug/dka plan "${exps[@]}" "${common[@]}"
fi
[ -n "${kv[shard]:-}" ] && common+=(--shard "${kv[shard]}")
[ "${kv[retry]:-0}" != 0 ] && common+=(--retry-failed)
[ "${kv[dry]:-0}" != 0 ] && common+=(--dry-run)

status=0
for exp in "${exps[@]}"; do
    target/debug/dka grid "$exp" "${common[@]}" || status=$?
done
exit $status
