#!/bin/sh
# make fuzz: run each libFuzzer harness for SECONDS from its committed seeds
# (tests/fuzz/seeds/NAME) and the corpus it grew in earlier runs (DIR/corpus/NAME), then
# print one line per harness with the number of inputs it ran. Any crash, sanitizer report,
# leak, timeout (> 30 s per input; the machine may be shared) or out-of-memory (> 2 GB) fails, with the input saved as
# DIR/crash-NAME-* (reproduce: DIR/fuzz_NAME DIR/crash-NAME-...).
#   sh tests/fuzz/run.sh SECONDS DIR NAME...
# FUZZ_SEED fixes libFuzzer's seed; FUZZ_RUNS also caps the inputs per harness, so a seeded run
# does the same work on a fast or a slow machine (CI: the same inputs every time).
secs=$1; dir=$2; shift 2
# Each input is written to a file first (the readers take paths): thousands a second. On
# tmpfs that never waits for the disk; on the shared disk one fopen waited 61 s behind
# other jobs' fsyncs and counted as a timeout. One private folder, removed at the end.
base=${TMPDIR:-/tmp}
[ -z "$TMPDIR" ] && [ -d /dev/shm ] && [ -w /dev/shm ] && base=/dev/shm
TMPDIR=$(mktemp -d "$base/ddpm_fuzz_run.XXXXXX") || exit 1
export TMPDIR
trap 'rm -rf "$TMPDIR"' EXIT
fail=0; total=0
for name in "$@"; do
    corpus="$dir/corpus/$name"
    mkdir -p "$corpus"
    log="$dir/fuzz_$name.log"
    ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=print_stacktrace=1 \
        "$dir/fuzz_$name" -max_total_time="$secs" ${FUZZ_SEED:+-seed=$FUZZ_SEED} ${FUZZ_RUNS:+-runs=$FUZZ_RUNS} -timeout=30 -rss_limit_mb=2048 -print_final_stats=1 \
        -artifact_prefix="$dir/crash-$name-" "$corpus" "tests/fuzz/seeds/$name" >"$log" 2>&1
    rc=$?
    runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
    files=$(ls "$corpus" | wc -l)
    cov=$(grep -o 'cov: [0-9]*' "$log" | tail -1)
    if [ "$rc" -ne 0 ]; then
        echo "fuzz_$name: FAILED (exit $rc) after ${runs:-?} inputs; log $log:"
        grep -E 'ERROR|SUMMARY|runtime error|Test unit written|^    #[0-9]' "$log" | head -n 25
        fail=$((fail + 1))
    else
        echo "fuzz_$name: ${runs:-0} inputs in $secs s, no crash or report ($cov, corpus $files files)"
        total=$((total + ${runs:-0}))
    fi
done
echo "fuzz: $total inputs, $fail harnesses failed"
[ "$fail" -eq 0 ]
