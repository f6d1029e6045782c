#!/bin/sh
# Runs every test binary given on the command line, shows its output, and sums the
# "N passed, N failed" lines. A binary that crashes or prints no summary counts as a failure.
pass=0; fail=0
for t in "$@"; do
    echo "== $t"
    out=$("./$t" 2>&1); rc=$?
    printf '%s\n' "$out" | grep -v '^  ok ' | grep -v '^[0-9]* passed, [0-9]* failed$'
    line=$(printf '%s\n' "$out" | grep -E '^[0-9]+ passed, [0-9]+ failed$' | tail -1)
    if [ -z "$line" ]; then
        echo "  FAIL $t: exited $rc without a summary"; fail=$((fail + 1)); continue
    fi
    p=${line%% passed*}; f=${line#*, }; f=${f%% failed*}
    echo "   $line"
    pass=$((pass + p)); fail=$((fail + f))
    if [ "$rc" -ne 0 ] && [ "$f" -eq 0 ]; then echo "  FAIL $t: exit code $rc"; fail=$((fail + 1)); fi
done
echo "$pass passed, $fail failed"
[ "$fail" -eq 0 ]
