#!/usr/bin/env bash
# Issue 14's robot-bridge rows: the quickstart planner (one per training seed) driving the MuJoCo PointMaze robot
# through `diffplan serve` with the latency-aware runner, at 20 and 50 Hz, under the fast sampler (DPM-Solver++,
# 3 steps) and the shipped one (DDIM, 10 steps), beside the same planner planning synchronously in process.
# Each deployment runs in real time and measures latency, so they go one at a time: run this on an otherwise
# quiet machine. One JSON per (seed, rate, setting) in OUT; `diffplan bench report` averages the seeds of a row
# ("Through the robot bridge with the fast settings"). Resumable: a trained planner is not trained again and a
# written JSON is not measured again.
#
#   benchmarks/fastgen/bridge.sh                                  # seeds 0 1 2
#   SEEDS=1 EPISODES=2 OUT=/tmp/bridge RUNS=/tmp/bridge-runs benchmarks/fastgen/bridge.sh   # a smoke test
set -euo pipefail

SEEDS=${SEEDS:-"0 1 2"}
EPISODES=${EPISODES:-20}
RUNS=${RUNS:-runs}
OUT=${OUT:-benchmarks/fastgen}
DIFFPLAN=${DIFFPLAN:-diffplan}
PYTHON=${PYTHON:-python}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}

# name:overrides (space separated) : the rates it runs at
SETTINGS=(
  "dpm3_cold:sampler=dpmsolver++ sampling_steps=3:20 50"
  "ddim10:sampler=ddim sampling_steps=10:50"
)
mkdir -p "$OUT"
for seed in $SEEDS; do
  # Seed 0's planner and files keep the names of the first measurement (runs/fastgen-qs, deploy_<hz>hz_<name>.json).
  tag=$([ "$seed" = 0 ] || echo "-s$seed")
  suffix=$([ "$seed" = 0 ] || echo "_s$seed")
  run="$RUNS/fastgen-qs$tag"
  for spec in "${SETTINGS[@]}"; do
    IFS=: read -r name overrides rates <<< "$spec"
    for hz in $rates; do
      json="$OUT/deploy_${hz}hz_${name}${suffix}.json"
      [ -f "$json" ] && continue
      if [ ! -f "$run/results.json" ]; then
        echo "== train $run (quickstart, seed $seed)"
        $DIFFPLAN quickstart "seed=$seed" torch_threads=1 --out "$run" --no-progress
      fi
      echo "== deploy $run at $hz Hz, $overrides -> $json"
      # shellcheck disable=SC2086  # overrides is a list of key=value
      $PYTHON -m diffplan.deploy.bench deploy "$run" $overrides --episodes "$EPISODES" --hz "$hz" --out "$json"
    done
  done
done
echo "== done; render the page with: $DIFFPLAN bench report"
