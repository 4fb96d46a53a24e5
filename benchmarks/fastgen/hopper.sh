#!/usr/bin/env bash
# Issue 14's hopper rows: the value-guided Diffuser replanning at every env step (the paper's execution) under
# several samplers, on the locomotion-medium suite's trained hopper-medium Diffusers (one per training seed), so
# the table averages over seeds. Same weights per run, only the sampler changes; 20 protocol episodes per row
# (the suite's), batch-1 latency over REPEATS plans. One JSON per run in OUT; `diffplan bench report` renders
# the folder as one table. Resumable: `bench fastgen` keeps the settings a run's JSON already holds and measures
# only the new ones; a missing trained run is reported.
#
#   benchmarks/fastgen/hopper.sh                       # after `diffplan bench suite ... --only 'hopper-medium/diffuser-*'`
#   SEEDS=0 EPISODES=2 REPEATS=2 OUT=/tmp/fg benchmarks/fastgen/hopper.sh   # a smoke test
set -euo pipefail

SEEDS=${SEEDS:-"0 1 2"}
EPISODES=${EPISODES:-20}
REPEATS=${REPEATS:-20}
RUNS=${RUNS:-runs/suites/locomotion-medium/hopper-medium}
OUT=${OUT:-benchmarks/fastgen/hopper-medium-replan1}
DIFFPLAN=${DIFFPLAN:-diffplan}
export OMP_NUM_THREADS=1

# DPM-Solver++ steps are deterministic (std 0): Diffuser's std-scaled guidance would vanish, so those settings
# guide with the unscaled shift (scale_grad_by_std=false); the DDPM row keeps Diffuser's scaled form, and so do
# the few-step stochastic rows: DDIM with eta 1 is the strided DDPM posterior, whose larger per-step std scales
# the guidance shift (0.1 std^2 grad) up as the steps get fewer.
SETTINGS=(
  "ddpm-20:sampler=ddpm,replan_every=1,torch_threads=1"
  "dpmsolver++-5:sampler=dpmsolver++,sampling_steps=5,replan_every=1,scale_grad_by_std=false,torch_threads=1"
  "dpmsolver++-3:sampler=dpmsolver++,sampling_steps=3,replan_every=1,scale_grad_by_std=false,torch_threads=1"
  "dpmsolver++-3-warm:sampler=dpmsolver++,sampling_steps=3,replan_every=1,warm_start_level=0.34,scale_grad_by_std=false,torch_threads=1"
  "ddim-eta1-5:sampler=ddim,ddim_eta=1,sampling_steps=5,replan_every=1,torch_threads=1"
  "ddim-eta1-3:sampler=ddim,ddim_eta=1,sampling_steps=3,replan_every=1,torch_threads=1"
  "ddim-eta1-3-warm:sampler=ddim,ddim_eta=1,sampling_steps=3,replan_every=1,warm_start_level=0.34,torch_threads=1"
  "ddim-eta1-2:sampler=ddim,ddim_eta=1,sampling_steps=2,replan_every=1,torch_threads=1"
)
source "$(dirname "$0")/each_run.sh"
fastgen_each_run
