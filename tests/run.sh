#!/bin/sh
# Runs every test binary given on the command line, shows its output, and sums the
# "N passed, N failed[, N skipped]" lines. A binary that crashes, prints no summary or runs
# longer than TEST_TIMEOUT seconds (default 900; killed with its whole process group, e.g. a
# hung mpirun) counts as a failure. A binary that exits 77 after a "skipped: why" line is
# reported as skipped (e.g. test_mpi without an MPI build) and counts as one skipped. The
# last line is "N passed, N failed", followed by ", N skipped" when checks (T_SKIP: "  skip
# why") or whole binaries did not run here.
# TEST_EXEC, when set, runs each binary through it (make test-arm64: qemu-aarch64).
limit=${TEST_TIMEOUT:-900}
pass=0; fail=0; skip=0; skipped=""
for t in "$@"; do
    echo "== $t"
    t0=$(date +%s)
    out=$(timeout -k 10 "$limit" $TEST_EXEC "./$t" 2>&1); rc=$?
    dt=$(( $(date +%s) - t0 ))
    printf '%s\n' "$out" | grep -v '^  ok ' | grep -v '^ *skipped: ' | grep -Ev '^[0-9]+ passed, [0-9]+ failed(, [0-9]+ skipped)?$'
    if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
        echo "  FAIL $t: timed out after ${limit} s (TEST_TIMEOUT)"; fail=$((fail + 1)); continue
    fi
    if [ "$rc" -eq 77 ]; then
        why=$(printf '%s\n' "$out" | grep -m1 'skipped' | sed 's/^ *skipped: *//')
        echo "   SKIPPED: ${why:-no reason given}"
        skipped="$skipped ${t##*/}"; skip=$((skip + 1)); continue
    fi
    line=$(printf '%s\n' "$out" | grep -E '^[0-9]+ passed, [0-9]+ failed(, [0-9]+ skipped)?$' | tail -1)
    if [ -z "$line" ]; then
        echo "  FAIL $t: exited $rc without a summary"; fail=$((fail + 1)); continue
    fi
    p=${line%% passed*}; f=${line#*, }; f=${f%% failed*}; s=0
    case "$line" in *skipped) s=${line##*failed, }; s=${s%% skipped} ;; esac
    echo "   $line (${dt} s)"
    pass=$((pass + p)); fail=$((fail + f)); skip=$((skip + s))
    if [ "$rc" -ne 0 ] && [ "$f" -eq 0 ]; then echo "  FAIL $t: exit code $rc"; fail=$((fail + 1)); fi
done
[ -n "$skipped" ] && echo "skipped:$skipped"
if [ "$skip" -gt 0 ]; then echo "$pass passed, $fail failed, $skip skipped"; else echo "$pass passed, $fail failed"; fi
[ "$fail" -eq 0 ]
