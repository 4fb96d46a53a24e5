# Sourced by the fastgen scripts (hopper.sh, guidance.sh): `bench fastgen` with their SETTINGS on each seed's
# trained planner RUNS/<AGENT>-s<seed> (AGENT: diffuser unless set), one JSON per run in OUT. Resumable (bench
# fastgen keeps the settings a JSON already holds); a missing trained run is reported, not fatal.
fastgen_each_run() {
  mkdir -p "$OUT"
  for seed in $SEEDS; do
    run="$RUNS/${AGENT:-diffuser}-s$seed"
    json="$OUT/${AGENT:-diffuser}-s$seed.json"
    if [ ! -f "$run/results.json" ]; then echo "== missing trained run $run (train it with the suite first)"; continue; fi
    echo "== fastgen $run -> $json"
    $DIFFPLAN bench fastgen "$run" "${SETTINGS[@]}" --episodes "$EPISODES" --repeats "$REPEATS" --out "$json"
  done
}
