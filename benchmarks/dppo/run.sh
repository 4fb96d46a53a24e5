#!/usr/bin/env bash
# Issue 13's benchmark: DPPO beside the Gaussian PPO baseline on TASK, SEEDS training seeds, PARALLEL seeds at a
# time (one process each, one torch thread), then one `diffplan bench dppo` over all seeds that reads the finished
# runs and writes benchmarks/dppo/<task>.json (rendered by `diffplan bench report`).
#
# Resumable: every run (diffusion_bc and bc pre-training, DPPO and PPO fine-tuning per seed) is skipped when
# finished and resumed from its last checkpoint when interrupted; each is locked while it trains, so a second
# copy of this script, or a stray process, stops with one line instead of training the same run twice.
#
#   benchmarks/dppo/run.sh                                        # hopper-medium, seeds 0 1 2, 2 at a time (hours)
#   TASK=walker2d-medium benchmarks/dppo/run.sh
#   SEEDS=2 PARALLEL=1 EXTRA=methods=ppo OUT=/tmp/ppo.json benchmarks/dppo/run.sh   # one seed's baseline beside its DPPO
#   SEEDS=0 EXTRA="bc_steps=20 env_steps=400 evals=2 minutes=2" EPISODES=2 RUNS=/tmp/dppo OUT=/tmp/dppo.json benchmarks/dppo/run.sh   # smoke test
set -euo pipefail

TASK=${TASK:-hopper-medium}
SEEDS=${SEEDS:-"0 1 2"}
PARALLEL=${PARALLEL:-2}
EPISODES=${EPISODES:-20}
RUNS=${RUNS:-runs/bench-dppo/$TASK}
OUT=${OUT:-benchmarks/dppo/$TASK.json}
EXTRA=${EXTRA:-}                 # more key=value settings of `bench dppo` (e.g. env_steps=500000, dppo.lr=...)
DIFFPLAN=${DIFFPLAN:-diffplan}
export OMP_NUM_THREADS=1

mkdir -p "$RUNS"
# shellcheck disable=SC2086  # EXTRA is a list of settings
printf '%s\n' $SEEDS | xargs -P "$PARALLEL" -I{} sh -c \
  "nice $DIFFPLAN bench dppo task=$TASK seeds={} runs=$RUNS $EXTRA --episodes $EPISODES --out $RUNS/seed-{}.json > $RUNS/seed-{}.log 2>&1 \
   && echo '== seed {} done' || { echo '== seed {} failed: see $RUNS/seed-{}.log'; exit 1; }"
all=$(printf '%s,' $SEEDS); all=${all%,}
$DIFFPLAN bench dppo "task=$TASK" "seeds=$all" "runs=$RUNS" $EXTRA --episodes "$EPISODES" --out "$OUT" > /dev/null
echo "== $OUT written; render the page with: $DIFFPLAN bench report"
