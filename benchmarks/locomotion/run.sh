#!/usr/bin/env bash
# Train one locomotion planner for a fixed CPU budget, evaluate it, measure decision latency at batch 1, and
# keep the JSON results here. Usage (from the repository root, the dataset made or being made by
#   diffplan data make <task>):
#   benchmarks/locomotion/run.sh <agent> <task> <train minutes> [key=value overrides...]
# e.g. benchmarks/locomotion/run.sh decision_diffuser hopper-medium 20 dim=16 sampling_steps=10
# RUN_TAG=-250k names the run and its JSON <agent>-<task><tag> (to keep results of different datasets apart).
# Then `diffplan bench report` puts the new row on benchmarks/README.md (rows of one setting and several seeds merge).
set -euo pipefail
agent=$1 task=$2 minutes=$3
shift 3
run=runs/bench/${agent}-${task}${RUN_TAG:-}
out=benchmarks/locomotion/${agent}-${task}${RUN_TAG:-}
# The shipped experiment of this agent and task where one exists (it holds what differs from the agent's
# method file), else the agent composed with the task file.
experiment=configs/experiments/${agent}-${task}.yaml
if [ -f "${experiment}" ]; then config=("${experiment}"); else config=("${agent}" "task=${task}"); fi
diffplan train "${config[@]}" torch_threads=1 max_train_minutes="${minutes}" train_steps=1000000 \
  eval_every=0 checkpoint_every=0 final_eval_episodes=20 eval_envs=20 run_dir="${run}" "$@" --no-progress
cp "${run}/results.json" "${out}.json"
case $agent in
  bc | td3bc | cql) echo "wrote ${out}.json" ;;  # Tianshou's baselines have no plan(): one MLP call per step
  *)
    diffplan bench plan "${run}" torch_threads=1 --repeats 20 --steps 100 --out "${out}-latency.json" > /dev/null
    echo "wrote ${out}.json and ${out}-latency.json" ;;
esac
