#!/usr/bin/env bash
# Runs the cargo fuzz targets one after another and prints one result line each.
#
#   fuzz/run_all.sh [MINUTES] [TARGET...]       # default: 10 minutes, every target
#   fuzz/run_all.sh --seconds S [TARGET...]     # CI: a few seconds each
#   fuzz/run_all.sh --replay [TARGET...]        # only replay the committed corpora
#
# Each target first replays its committed corpus (`corpus/TARGET`, read-only: a
# regression there fails at once), then fuzzes for the time given with new inputs
# going to the scratch corpus `runs/TARGET` (kept between runs, not committed).
# A crash stops that target, leaves the input in `artifacts/`, and makes the
# script exit non-zero after the others have run. Runs are `nice -n 19`, one
# process each (`FUZZ_JOBS` is not used: the machines we run on are shared).
#
# The results table (`logs/summary.md`, or the file named by `SUMMARY`, so two
# invocations running side by side with disjoint targets do not overwrite each
# other's table) has, per target: seconds run, executions,
# libFuzzer's edge coverage (`cov`) and features (`ft`), corpus size, outcome.
# Built with `--sanitizer none` (the code under test has no unsafe code: a
# sanitizer would cost half the speed and find nothing the assertions cannot) and
# with debug assertions and overflow checks on (cargo fuzz's default).
set -euo pipefail
cd "$(dirname "$0")"
export RUSTC_BOOTSTRAP=1 CARGO_TERM_COLOR=never

seconds=600
replay_only=0
case "${1:-}" in
--seconds) seconds="$2"; shift 2 ;;
--replay) replay_only=1; shift ;;
[0-9]*) seconds=$(( $1 * 60 )); shift ;;
esac
targets=("$@")
if [ "${#targets[@]}" -eq 0 ]; then
    mapfile -t targets < <(cargo fuzz list)
fi

nice -n 10 cargo fuzz build --sanitizer none
bin=target/x86_64-unknown-linux-gnu/release
mkdir -p runs artifacts logs
summary="${SUMMARY:-logs/summary.md}"
printf '| target | seconds | executions | cov | ft | corpus | result |\n|---|---:|---:|---:|---:|---:|---|\n' > "$summary"
failed=()

for t in "${targets[@]}"; do
    mkdir -p "corpus/$t" "runs/$t"
    log="logs/$t.log"
    # Replay: every committed input once, no mutation.
    if ! "$bin/$t" -runs=0 "corpus/$t" > "$log.replay" 2>&1; then
        echo "$t: committed corpus FAILS (see $log.replay)"
        failed+=("$t")
        printf '| %s | 0 | - | - | - | - | corpus replay failed |\n' "$t" >> "$summary"
        continue
    fi
    [ "$replay_only" = 1 ] && { echo "$t: corpus replayed ($(ls "corpus/$t" | wc -l) inputs)"; continue; }
    start=$(date +%s)
    set +e
    nice -n 19 "$bin/$t" "runs/$t" "corpus/$t" -max_total_time="$seconds" \
        -print_final_stats=1 -artifact_prefix="artifacts/$t-" > "$log" 2>&1
    rc=$?
    set -e
    took=$(( $(date +%s) - start ))
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
    last=$(grep -E '^#[0-9]+' "$log" | tail -1)
    cov=$(sed -n 's/.* cov: \([0-9]*\).*/\1/p' <<< "$last")
    ft=$(sed -n 's/.* ft: \([0-9]*\).*/\1/p' <<< "$last")
    corp=$(sed -n 's/.* corp: \([0-9]*\)\/.*/\1/p' <<< "$last")
    if [ "$rc" = 0 ]; then
        result=ok
    else
        result="CRASH $(grep -o 'artifacts/[^ ]*' "$log" | tail -1)"
        failed+=("$t")
    fi
    line="| $t | $took | ${execs:-?} | ${cov:-?} | ${ft:-?} | ${corp:-?} | $result |"
    echo "$line" | tee -a "$summary"
done

if [ "${#failed[@]}" -gt 0 ]; then
    echo "failed: ${failed[*]}" >&2
    exit 1
fi
