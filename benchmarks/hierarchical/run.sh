#!/usr/bin/env bash
# Hierarchical Diffuser vs the flat Diffuser at the same wall-clock training budget on the PointMaze mazes.
#
# For each maze, seed and agent: train the shipped experiment config (configs/experiments/<agent>-pointmaze-
# <maze>.yaml) for BUDGET_MIN minutes of training time on CLOCK (cpu: the run's own CPU time, which other work on
# a shared machine cannot shrink; wall: elapsed time), then `diffplan bench maze` over EPISODES protocol
# episodes: the planner's score as trained (execution stated in the JSON), the score with plans followed to
# their end without the goal-directed PD switch (--plan-to-end), the go-to-goal baseline and the hard-episode
# split, planning latency at batch 1 (--plan-latency) and training steps/s. One JSON per run in OUT; the page:
# `diffplan bench report` (section "Maze: hierarchical vs flat planner").
#
# Resumable: a finished run (results.json) is not trained again, an interrupted one resumes from its last
# checkpoint, and a run whose JSON exists is not evaluated again. Runs go one at a time, one torch thread.
#
#   benchmarks/hierarchical/run.sh                                   # the benchmark (2 mazes x 2 seeds x 2 agents)
#   BUDGET_MIN=0.3 EPISODES=4 REPEATS=3 OUT=/tmp/hb RUNS=/tmp/hb-runs benchmarks/hierarchical/run.sh   # a smoke test
set -euo pipefail

BUDGET_MIN=${BUDGET_MIN:-60}          # training minutes per run (the same for both agents)
CLOCK=${CLOCK:-cpu}                   # budget_clock of those minutes: cpu | wall
EPISODES=${EPISODES:-100}             # evaluation protocol episodes per score
REPEATS=${REPEATS:-50}                # batch-1 plans timed
SEEDS=${SEEDS:-"0 1"}
MAZES=${MAZES:-"medium large"}
AGENTS=${AGENTS:-"hierarchical diffuser"}
OUT=${OUT:-benchmarks/hierarchical}
RUNS=${RUNS:-runs/hier-bench}
DIFFPLAN=${DIFFPLAN:-diffplan}
export OMP_NUM_THREADS=1

mkdir -p "$OUT" "$RUNS"
for maze in $MAZES; do
  for seed in $SEEDS; do
    for agent in $AGENTS; do
      run="$RUNS/$agent-$maze-s$seed"
      json="$OUT/$agent-$maze-s$seed.json"
      if [ ! -f "$run/results.json" ]; then
        if [ -f "$run/checkpoints/latest" ]; then
          echo "== resume $run"
          nice $DIFFPLAN train --resume "$run" "max_train_minutes=$BUDGET_MIN" --no-progress
        else
          if [ -e "$run" ]; then mv "$run" "$run.incomplete-$(date +%s)"; fi  # started, never checkpointed
          echo "== train $run ($BUDGET_MIN min)"
          nice $DIFFPLAN train "configs/experiments/$agent-pointmaze-$maze.yaml" "seed=$seed" \
            "max_train_minutes=$BUDGET_MIN" "budget_clock=$CLOCK" train_steps=10000000 eval_every=0 checkpoint_every=1000 \
            final_eval_episodes=10 plot_plans=4 torch_threads=1 "run_dir=$run" --no-progress
        fi
      fi
      if [ ! -f "$json" ]; then
        echo "== bench $run -> $json"
        nice $DIFFPLAN bench maze "$run" torch_threads=1 --episodes "$EPISODES" --plan-to-end --plan-latency \
          --repeats "$REPEATS" --out "$json"
      fi
    done
  done
done
echo "== done; render the page with: $DIFFPLAN bench report"
