#!/usr/bin/env bash
# `just test-slurm`: `dka grid --emit-slurm` against a real single-node Slurm.
#
# Installs Debian's Slurm (slurmctld, slurmd, slurm-client) and munge when missing, starts a
# controller and a worker on localhost as ../shared/SLURM.md describes (everything under a
# fresh temporary folder, stopped by their pid files on exit, whatever happens), emits a CPU
# job array of 3 tasks for a small grid (Figure 8's experiment with a profile of 6 short runs,
# on `dka data synth` images), cancels one task in the middle of a run (its SIGTERM must reach
# dka, which checkpoints), waits for the others, resubmits the cancelled task alone (it must
# resume the run from the checkpoint), and checks that runs.csv lists every run of the grid
# exactly once, with status ok. Every wait is bounded; a failure prints the Slurm and task
# logs. Needs root (apt-get, and slurmd runs jobs as their user).
#
# Environment: DKA (the binary, default target/debug/dka), SLURM_TEST_EPOCHS (epochs per run,
# default 300: long enough to cancel a task mid-run), SLURM_TEST_KEEP=1 keeps the folder.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)
t0=$(date +%s)
say() { printf '[test-slurm %3ds] %s\n' "$(($(date +%s) - t0))" "$*"; }
die() { printf '[test-slurm] FAILED: %s\n' "$*" >&2; exit 1; }

[ "$(id -u)" = 0 ] || die "needs root (apt-get; slurmd runs each job as its user)"
DKA=${DKA:-target/debug/dka}
EPOCHS=${SLURM_TEST_EPOCHS:-300}
if [ ! -x "$DKA" ]; then
    say "building dka"
    cargo build -p dka-bench --bin dka
fi
DKA=$(cd "$(dirname "$DKA")" && pwd)/$(basename "$DKA")

# --- install -----------------------------------------------------------------------------
missing=()
for c in slurmctld slurmd sbatch squeue scancel scontrol sinfo munged mungekey; do
    command -v "$c" >/dev/null 2>&1 || missing+=("$c")
done
if [ ${#missing[@]} -gt 0 ]; then
    say "installing slurmctld slurmd slurm-client munge (missing: ${missing[*]})"
    export DEBIAN_FRONTEND=noninteractive
    timeout 600 apt-get update -qq
    timeout 600 apt-get install -y -qq --no-install-recommends slurmctld slurmd slurm-client munge >/dev/null
fi
say "$(slurmctld -V)"

# --- start (../shared/SLURM.md) ------------------------------------------------------------
B=$(mktemp -d /tmp/dka-slurm.XXXXXX)
chmod 755 "$B"
mkdir -p "$B"/{state,spool,log,run,munge}
chmod 755 "$B/munge" # the socket's folder must be world-searchable
export SLURM_CONF=$B/slurm.conf
jobs_submitted=()

# Prints what a failure needs to be understood.
dump_logs() {
    echo "----- squeue" >&2
    squeue -a 2>&1 | head -20 >&2 || true
    for j in "${jobs_submitted[@]}"; do
        echo "----- scontrol show job $j" >&2
        scontrol -o show job "$j" 2>&1 | head -20 >&2 || true
    done
    for f in "$B"/log/slurmctld.log "$B"/log/slurmd.log "$B"/munge/munged.log "$B"/out/slurm/*.log; do
        [ -f "$f" ] || continue
        echo "----- $f (last 40 lines)" >&2
        tail -n 40 "$f" >&2
    done
}

# Stops what this script started: our jobs' processes (by the pids Slurm lists for them),
# then slurmd, slurmctld and munged by their pid files, each waited for (SIGKILL after 10 s).
stop_pid() {
    local pid=$1 name=$2
    kill "$pid" 2>/dev/null || return 0
    for _ in $(seq 100); do
        kill -0 "$pid" 2>/dev/null || return 0
        sleep 0.1
    done
    echo "[test-slurm] $name ($pid) did not stop on SIGTERM; SIGKILL" >&2
    kill -9 "$pid" 2>/dev/null || true
}
cleanup() {
    local rc=$?
    set +e
    if [ $rc -ne 0 ]; then dump_logs; fi
    if [ -f "$B/run/slurmctld.pid" ] && [ ${#jobs_submitted[@]} -gt 0 ]; then
        for j in "${jobs_submitted[@]}"; do scancel "$j" 2>/dev/null; done
        for _ in $(seq 150); do
            [ -z "$(squeue -h 2>/dev/null)" ] && break
            sleep 0.1
        done
        for j in "${jobs_submitted[@]}"; do
            for p in $(job_pids "$j"); do kill -9 "$p" 2>/dev/null; done
        done
    fi
    for d in run/slurmd run/slurmctld munge/munged; do
        if [ -f "$B/$d.pid" ]; then stop_pid "$(cat "$B/$d.pid")" "$(basename "$d")"; fi
    done
    if [ "${SLURM_TEST_KEEP:-0}" = 1 ] || [ $rc -ne 0 ]; then
        echo "[test-slurm] kept $B" >&2
    else
        rm -rf "$B"
    fi
    exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

host=$(hostname -s)
# The processes of job (or array task) `$1` on this node.
job_pids() {
    local id
    id=$(scontrol -o show job "$1" 2>/dev/null | grep -o 'JobId=[0-9]*' | cut -d= -f2) || true
    for j in $id; do
        SLURMD_NODENAME=$host scontrol listpids "$j" 2>/dev/null |
            awk 'NR > 1 && $1 ~ /^[0-9]+$/ {print $1}' || true
    done
}
# Two free ports (SLURM.md's 16817/16818 unless taken, e.g. by another test run).
free_port() {
    local p=$1
    while (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; do p=$((p + 2)); done
    echo "$p"
}
ctld_port=$(free_port 16817)
slurmd_port=$(free_port $((ctld_port + 1)))

mungekey -c -k "$B/munge/munge.key"
chmod 600 "$B/munge/munge.key"
munged --key-file="$B/munge/munge.key" --socket="$B/munge/munge.sock" \
    --pid-file="$B/munge/munged.pid" --log-file="$B/munge/munged.log" \
    --seed-file="$B/munge/munged.seed"
cat >"$SLURM_CONF" <<EOF
ClusterName=local
SlurmctldHost=$host
SlurmctldPort=$ctld_port
SlurmdPort=$slurmd_port
SlurmUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$B/munge/munge.sock
StateSaveLocation=$B/state
SlurmdSpoolDir=$B/spool
SlurmctldPidFile=$B/run/slurmctld.pid
SlurmdPidFile=$B/run/slurmd.pid
SlurmctldLogFile=$B/log/slurmctld.log
SlurmdLogFile=$B/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
MpiDefault=none
MailProg=/bin/true
ReturnToService=2
KillWait=5
MinJobAge=300
NodeName=$host NodeAddr=127.0.0.1 CPUs=2 RealMemory=20000 State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP
EOF
slurmctld -i
slurmd
say "slurmctld :$ctld_port and slurmd :$slurmd_port started under $B"

# Waits until `$2` (a shell condition) holds, at most `$1` seconds.
wait_for() {
    local limit=$1 what=$3 end=$(($(date +%s) + $1))
    until eval "$2"; do
        [ "$(date +%s)" -lt "$end" ] || die "timed out after ${limit}s waiting for $what"
        sleep 0.5
    done
}
wait_for 60 'sinfo -h -o %t 2>/dev/null | grep -q idle' "the node to be idle"
say "node $host idle"

# --- the grid ----------------------------------------------------------------------------
"$DKA" data synth --out "$B/synth" --classes 3 --per-class 24 --size 32 2>/dev/null
exp=$B/fig8_slurm.toml
# Figure 8's experiment plus a profile like `quick` with 3 draws (6 runs) and longer runs.
cp experiments/fig8_kernel_sizes.toml "$exp"
cat >>"$exp" <<EOF

[profiles.slurm-test]
cpu = true
random_weights = true
note = "the Slurm test's profile: quick's tiny backbone on synthetic images, 3 draws, $EPOCHS epochs."
[profiles.slurm-test.base]
backbone = "experiments/backbones/vit_quick.json"
img_size = 32
epochs = $EPOCHS
batch_size = 16
augment = false
dataset = "folder"
fraction = "100%"
[profiles.slurm-test.grid]
"method.large_kernel" = [7, 51]
"method.small_kernel" = [3]
draw = [0, 1, 2]
EOF
out=$B/out
args=(grid "$exp" --profile slurm-test --data "folder=$B/synth" --out "$out" --cache-dir "$B/cache" --device cpu)
mapfile -t expected < <(RUST_LOG=warn "$DKA" "${args[@]}" --dry-run | grep -oE "^[0-9a-f]{12} " | tr -d " " | sort)
[ ${#expected[@]} -eq 6 ] || die "the grid should plan 6 runs, planned ${#expected[@]}"
"$DKA" "${args[@]}" --emit-slurm 3 --gpus-per-task 0 --cpus-per-task 1 --mem 500M --time 15 \
    --sbatch-extra "#SBATCH --comment=dka-test-slurm" >/dev/null
script=$out/grid.sbatch
grep -q '^#SBATCH --array=0-2$' "$script" || die "no 3-task array in $script"
grep -q '^#SBATCH --gres' "$script" && die "--gpus-per-task 0 still asks for a GPU"
grep -q '^exec .* --device cpu$' "$script" || die "the task does not exec dka on the CPU"
grep -q '^#SBATCH --comment=dka-test-slurm$' "$script" || die "--sbatch-extra not passed through"

# The options the test array does not use, checked by Slurm itself (sbatch --test-only):
# --requeue, --partition, --account, a longer --time, --term-before. (The GPU request needs a
# GPU node: unit tests check its lines.)
"$DKA" "${args[@]:0:6}" --out "$B/out2" --device cpu --emit-slurm 4 --gpus-per-task 0 \
    --cpus-per-task 2 --mem 1G --time 1-00:00:00 --term-before 300 --requeue --partition debug --account dka \
    --sbatch-extra "--comment=options" >/dev/null
for o in "--requeue" "--partition=debug" "--account=dka" "--time=1-00:00:00" "--signal=B:TERM@300"; do
    grep -q "^#SBATCH $o\$" "$B/out2/grid.sbatch" || die "#SBATCH $o missing from $B/out2/grid.sbatch"
done
sbatch --test-only "$B/out2/grid.sbatch" >"$B/test-only.txt" 2>&1 ||
    die "sbatch --test-only refused the script: $(cat "$B/test-only.txt")"
say "sbatch --test-only accepts --requeue, --partition, --account, --time and --signal"

submit() { # sets $submitted to the array job's id
    submitted=$(sbatch --parsable "$@" "$script") || die "sbatch $* failed"
    submitted=${submitted%%;*}
    jobs_submitted+=("$submitted")
}
# State and exit code of array task `$1_$2`, e.g. `COMPLETED 0:0` (kept by MinJobAge).
task_state() {
    scontrol -o show job "$1_$2" 2>/dev/null |
        sed -n 's/.*JobState=\([A-Z_]*\) .*ExitCode=\([0-9:]*\).*/\1 \2/p' | head -1
}
ok_rows() { # ids with status ok in runs.csv, one per line, sorted
    [ -f "$out/runs.csv" ] || return 0
    awk -F, 'NR > 1 && $2 == "ok" {print $1}' "$out/runs.csv" | sort
}

submit
job=$submitted
say "submitted array job $job (3 tasks, 2 runs each)"
# Cancel task 1 during its first run: its log names the run it started, whose folder has no
# result.json yet.
victim=1
log=$out/slurm/${job}_${victim}.log
running_run() {
    local id
    id=$(grep -ao 'run [0-9a-f]\{12\} {' "$log" 2>/dev/null | tail -1 | cut -d' ' -f2) || true
    [ -n "$id" ] && [ -d "$out/runs/$id" ] && [ ! -f "$out/runs/$id/result.json" ] && echo "$id"
}
wait_for 120 '[ -n "$(running_run)" ]' "task $victim to start a run"
killed=$(running_run)
# The batch step is dka itself (the script exec'd it), so Slurm's signals reach it.
pids=$(job_pids "${job}_${victim}")
comms=$(for p in $pids; do cat "/proc/$p/comm" 2>/dev/null; done | sort -u | tr '\n' ' ')
case " $comms " in
    *" dka "*) ;;
    *) die "task ${job}_${victim} runs no dka process (processes: $comms)" ;;
esac
case " $comms " in
    *" bash "*) die "the batch shell is still there (processes: $comms): dka was not exec'd" ;;
esac
scancel "${job}_${victim}"
say "cancelled task ${job}_${victim} during run $killed (processes: $comms)"
wait_for 300 '[ -z "$(squeue -h)" ]' "the array to end"
case "$(task_state "$job" "$victim")" in
    CANCELLED*) ;;
    *) die "task $victim: $(task_state "$job" "$victim"), expected CANCELLED" ;;
esac
for t in 0 2; do
    [ "$(task_state "$job" "$t")" = "COMPLETED 0:0" ] ||
        die "task $t: $(task_state "$job" "$t"), expected COMPLETED 0:0"
done
[ -f "$out/runs/$killed/result.json" ] && die "run $killed was cancelled but has a result.json"
# scancel's SIGTERM reached dka itself (exec), which saved a checkpoint before exiting.
grep -q "interrupted by SIGTERM after saving a checkpoint" "$log" ||
    die "task $victim's log does not show dka receiving SIGTERM and checkpointing"
n_ok=$(ok_rows | wc -l)
[ "$n_ok" -eq 4 ] || die "after the cancel, runs.csv should list the other tasks' 4 runs, lists $n_ok"
say "tasks 0 and 2 completed (4 runs); task 1 cancelled, run $killed left unfinished"

submit --array=$victim
job2=$submitted
say "resubmitted task $victim as array job $job2"
wait_for 300 '[ -z "$(squeue -h)" ]' "the resubmitted task to end"
[ "$(task_state "$job2" "$victim")" = "COMPLETED 0:0" ] ||
    die "resubmitted task: $(task_state "$job2" "$victim"), expected COMPLETED 0:0"

# --- the result --------------------------------------------------------------------------
mapfile -t got < <(ok_rows)
rows=$(($(wc -l <"$out/runs.csv") - 1))
[ "$rows" -eq 6 ] || die "runs.csv has $rows rows, expected 6: $(cat "$out/runs.csv")"
[ "${got[*]}" = "${expected[*]}" ] ||
    die "runs.csv's ok runs (${got[*]}) are not the grid's (${expected[*]}) exactly once"
grep -q "run $killed: resuming from its checkpoint" "$out/slurm/${job2}_${victim}.log" ||
    die "the resubmitted task did not resume run $killed from its checkpoint"
say "PASS: runs.csv lists each of the grid's 6 runs exactly once, status ok (run $killed resumed from its SIGTERM checkpoint)"
