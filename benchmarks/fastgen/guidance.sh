#!/usr/bin/env bash
# What value guidance buys at acting time: the hopper-medium-60min suite's value-guided Diffusers (one per training
# seed, 60 CPU-minutes each), acting as that suite does (DDIM eta 1 in 2 steps, replanning every env step), with
# the guidance gradient on or off (guide_scale=0) and 1, 8 or 32 candidates ranked by the EMA value network.
# Same weights per run; 20 protocol episodes per row (the suite's); batch-1 latency over REPEATS plans. One JSON
# per run in OUT; `diffplan bench report` renders the folder as one table. Resumable: `bench fastgen` keeps the
# settings a run's JSON already holds and measures only the new ones; a missing trained run is reported.
#
#   benchmarks/fastgen/guidance.sh        # after `diffplan bench suite benchmarks/suites/hopper-medium-60min.yaml`
#   SEEDS=0 EPISODES=2 REPEATS=2 OUT=/tmp/fg benchmarks/fastgen/guidance.sh   # a smoke test
#   RUNS=runs/suites/locomotion-medium/halfcheetah-medium OUT=benchmarks/fastgen/halfcheetah-medium-guidance \
#     benchmarks/fastgen/guidance.sh     # the same rows on another suite's Diffusers (AGENT=hierarchical: its HDs)
set -euo pipefail

SEEDS=${SEEDS:-"0 1 2"}
EPISODES=${EPISODES:-20}
REPEATS=${REPEATS:-20}
RUNS=${RUNS:-runs/suites/hopper-medium-60min/hopper-medium}
OUT=${OUT:-benchmarks/fastgen/hopper-medium-60min-guidance}
DIFFPLAN=${DIFFPLAN:-diffplan}
export OMP_NUM_THREADS=1

ACT="sampler=ddim,ddim_eta=1,sampling_steps=2,replan_every=1,torch_threads=1"
SETTINGS=(
  "guided-best-of-8:$ACT,n_candidates=8"
  "ranked-best-of-8:$ACT,n_candidates=8,guide_scale=0"
  "guided-1:$ACT,n_candidates=1"
  "unguided-1:$ACT,n_candidates=1,guide_scale=0"
  "guided-best-of-32:$ACT,n_candidates=32"
  "ranked-best-of-32:$ACT,n_candidates=32,guide_scale=0"
)
source "$(dirname "$0")/each_run.sh"
fastgen_each_run
