#!/usr/bin/env bash
# Issue 14's pointmaze-large rows: samplers side by side on the hierarchical benchmark's trained planners
# (benchmarks/hierarchical/run.sh: the flat Diffuser and the Hierarchical Diffuser, 60 CPU-minutes each, one per
# training seed), so the table averages over seeds. Same weights per run, only the sampler changes; EPISODES
# protocol episodes per row, one plan per episode (the shipped execution), batch-1 plan latency over REPEATS
# plans. One JSON per run in OUT; `diffplan bench report` renders the folder as one table. Resumable: `bench
# fastgen` keeps the settings a run's JSON already holds and measures only the new ones; a missing trained run
# is reported.
#
#   benchmarks/fastgen/large.sh                      # after benchmarks/hierarchical/run.sh (same RUNS)
#   AGENTS=hierarchical SEEDS=2 benchmarks/fastgen/large.sh   # one agent, one seed (e.g. one process per core)
#   SEEDS=0 EPISODES=2 REPEATS=2 OUT=/tmp/fg benchmarks/fastgen/large.sh   # a smoke test
set -euo pipefail

SEEDS=${SEEDS:-"0 1 2"}
AGENTS=${AGENTS:-"diffuser hierarchical"}
EPISODES=${EPISODES:-50}
REPEATS=${REPEATS:-20}
RUNS=${RUNS:-runs/hier-bench}
OUT=${OUT:-benchmarks/fastgen/large-hd-vs-flat}
DIFFPLAN=${DIFFPLAN:-diffplan}
export OMP_NUM_THREADS=1

# The flat planner's shipped sampler (DDIM, 10 steps) and DPM-Solver++ at fewer steps; the hierarchical planner's
# settings `a/b`: a solver steps for the subgoals, b for the segments (low_sampling_steps).
FLAT=(
  "ddim-10:torch_threads=1"
  "dpmsolver++-5:sampler=dpmsolver++,sampling_steps=5,torch_threads=1"
  "dpmsolver++-3:sampler=dpmsolver++,sampling_steps=3,torch_threads=1"
  "dpmsolver++-2:sampler=dpmsolver++,sampling_steps=2,torch_threads=1"
)
HIERARCHICAL=(
  "ddim-10:torch_threads=1"
  "ddim-10/3:low_sampling_steps=3,torch_threads=1"
  "dpmsolver++-5/3:sampler=dpmsolver++,sampling_steps=5,low_sampling_steps=3,torch_threads=1"
  "dpmsolver++-3/2:sampler=dpmsolver++,sampling_steps=3,low_sampling_steps=2,torch_threads=1"
  "dpmsolver++-3/1:sampler=dpmsolver++,sampling_steps=3,low_sampling_steps=1,torch_threads=1"
  "dpmsolver++-2/1:sampler=dpmsolver++,sampling_steps=2,low_sampling_steps=1,torch_threads=1"
)
mkdir -p "$OUT"
for seed in $SEEDS; do
  for agent in $AGENTS; do
    run="$RUNS/$agent-large-s$seed"
    json="$OUT/$agent-large-s$seed.json"
    if [ ! -f "$run/results.json" ]; then echo "== missing trained run $run (benchmarks/hierarchical/run.sh first)"; continue; fi
    if [ "$agent" = diffuser ]; then settings=("${FLAT[@]}"); else settings=("${HIERARCHICAL[@]}"); fi
    echo "== fastgen $run -> $json"
    $DIFFPLAN bench fastgen "$run" "${settings[@]}" --episodes "$EPISODES" --repeats "$REPEATS" --steps 300 --out "$json"
  done
done
