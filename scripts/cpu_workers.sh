#!/usr/bin/env bash
# Prints the grid workers (`dka grid --workers`) for the CPU recipes (demo, demo-convergence,
# demo-lr, long-range): one per 2 cores, at least 1; DKA_WORKERS=N overrides.
#
# Why: the demo's steps are small (per-operation overhead, not arithmetic), and on the two 2-core
# machines measured (a Xeon with AMX and an AMD EPYC; 12 of the demo's runs) one worker with 2
# threads finished first: two 1-thread workers took 1.10x (Xeon) and 1.11x (AMD EPYC) as long
# (the two vCPUs do not give two cores' worth when both compute). Where there are more cores,
# each worker keeps 2.
cores=$(nproc 2>/dev/null || echo 2)
n=${DKA_WORKERS:-$(( cores / 2 ))}
[ "$n" -ge 1 ] 2>/dev/null || n=1
echo "$n"
