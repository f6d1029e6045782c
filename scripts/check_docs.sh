#!/bin/sh
# Runs the commands that README.md and docs/*.md mark as runnable, and says which fail.
#
#     sh scripts/check_docs.sh [FILE.md ...]        (default: README.md docs/*.md; needs ./ddpm)
#
# The convention: a fenced block opened with ```sh on the line right after a line that reads
#     <!-- check -->
# is run; every other block is for reading only (make demo, make bench, mpirun, long training,
# Python scripts). A marker not followed by a ```sh block is itself a failure, so a typo cannot
# silently drop a block.
#
# Each marked block runs with `sh -e` in a fresh folder of its own, as a user who has run
# `make demo` would run it from the repository's top folder, except that the large things are
# tiny stand-ins, so that the whole check takes about a minute:
#   ddpm, data/, scripts/, tests/   links to this repository's
#   configs/                        this repository's configs; demo.json, fashion_mnist.json and
#                                   bench.json replaced by the same configs (every key as
#                                   `ddpm info` resolves it) with an 8x8, ch 8 model trained
#                                   4 steps on 64 images
#   runs/demo, runs/fashion_mnist   trained from those stand-ins (class-conditional / not)
#   ddpm-cifar10-32/                tests/fixtures/diffusers_tiny, a diffusers UNet2DModel folder
#                                   with google/ddpm-cifar10-32's scheduler config, in place of
#                                   the 143 MB download
# A block fails when it exits non-zero or runs longer than CHECK_TIMEOUT seconds (default 300).
# Prints one line per block, the output of failed ones, and "N passed, N failed" last; exit 1
# if any failed, 2 if it could not start.
cd "$(dirname "$0")/.." || exit 2
root=$(pwd)
limit=${CHECK_TIMEOUT:-300}
# Idle OpenMP threads sleep instead of spinning: the machines this runs on are shared, and
# spinning threads of tiny models then cost more than the work.
OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-passive}
export OMP_WAIT_POLICY

if [ ! -x ./ddpm ]; then
    echo "check_docs.sh: ./ddpm not found: run make first" >&2
    exit 2
fi
[ $# -gt 0 ] || set -- README.md docs/*.md

tmp=$(mktemp -d "${TMPDIR:-/tmp}/ddpm-docs.XXXXXX") || exit 2
child=
trap 'rm -rf "$tmp"' EXIT
# timeout runs a block in a process group of its own: stop it too
trap '[ -n "$child" ] && kill "$child" 2>/dev/null; exit 130' INT TERM

# ---- the folder every block starts from ------------------------------------------------
base=$tmp/base
mkdir -p "$base/configs" "$base/runs" "$tmp/blocks"
for x in ddpm data scripts tests; do ln -s "$root/$x" "$base/$x"; done
for f in configs/*; do ln -s "$root/$f" "$base/$f"; done

# standin CONFIG [--set ...]: CONFIG resolved by ddpm info, with a tiny model and run, as a file
TINY="--set data.image_size=8 --set data.limit=64 --set model.ch=8 --set model.ch_mult=[1,2]
      --set model.num_res_blocks=1 --set model.attn_resolutions=[4] --set model.groups=4
      --set train.batch_size=8 --set train.steps=4 --set train.warmup=1 --set train.log_every=2
      --set train.sample_every=2 --set train.ckpt_every=2 --set train.sample_n=4"
standin() {
    cfg=$1
    shift
    rm -f "$base/$cfg"
    set -f # $TINY holds [1,2]: no file name expansion
    # shellcheck disable=SC2086
    ./ddpm info --config "$cfg" --no-data $TINY "$@" >"$tmp/info.out" 2>"$tmp/info.err"
    rc=$?
    set +f
    [ $rc -eq 0 ] &&
        awk '/^\{/ { p = 1 } p { print } p && /^\}/ { exit }' "$tmp/info.out" >"$base/$cfg" && [ -s "$base/$cfg" ] || {
        echo "check_docs.sh: could not make a stand-in for $cfg:" >&2
        cat "$tmp/info.err" >&2
        exit 2
    }
}
standin configs/demo.json --set model.num_classes=10
standin configs/fashion_mnist.json
standin configs/bench.json
ln -s "$root/tests/fixtures/diffusers_tiny" "$base/ddpm-cifar10-32"
(cd "$base" && ./ddpm train --config configs/fashion_mnist.json --quiet &&
    ./ddpm train --config configs/demo.json --quiet) >"$tmp/train.log" 2>&1 || {
    echo "check_docs.sh: could not train the stand-in runs:" >&2
    cat "$tmp/train.log" >&2
    exit 2
}

# ---- the marked blocks ---------------------------------------------------------------------
# Each becomes blocks/NNNN.sh whose first line names FILE:LINE; a marker without its block
# becomes a block that fails with that message.
n=0
for md in "$@"; do
    [ -f "$md" ] || { echo "check_docs.sh: $md: no such file" >&2; exit 2; }
    n=$(awk -v md="$md" -v dir="$tmp/blocks" -v n="$n" '
        function open_block(line) { n++; f = sprintf("%s/%04d.sh", dir, n); print "# " md ":" line > f }
        inside && /^```[ \t]*$/ { inside = 0; close(f); next }
        inside { print > f; next }
        marked {
            marked = 0
            if ($0 ~ /^```sh[ \t]*$/) { open_block(NR); inside = 1; next }
            open_block(NR - 1); print "echo \"<!-- check --> not followed by a \\`\\`\\`sh block\" >&2; exit 1" > f; close(f)
        }
        /^[ \t]*<!--[ \t]*check[ \t]*-->[ \t]*$/ { marked = 1 }
        END {
            if (marked) { open_block(NR); print "echo \"<!-- check --> at the end of the file\" >&2; exit 1" > f; close(f) }
            if (inside) { print "echo \"block not closed\" >&2; exit 1" > f; close(f) }
            print n
        }' "$md") || exit 2
done

# ---- run them ---------------------------------------------------------------------------------
pass=0
fail=0
for b in "$tmp"/blocks/*.sh; do
    [ -f "$b" ] || continue
    where=$(head -n 1 "$b" | sed 's/^# //')
    dir=$tmp/run/$(basename "$b" .sh)
    mkdir -p "$tmp/run"
    cp -a "$base" "$dir"
    t0=$(date +%s)
    (cd "$dir" && exec timeout -k 10 "$limit" sh -e "$b") >"$dir.log" 2>&1 &
    child=$!
    wait $child
    rc=$?
    child=
    dt=$(($(date +%s) - t0))
    if [ $rc -eq 0 ]; then
        pass=$((pass + 1))
        echo "  ok   $where (${dt} s)"
    else
        fail=$((fail + 1))
        [ $rc -eq 124 ] && echo "  FAIL $where: timed out after $limit s (CHECK_TIMEOUT)" || echo "  FAIL $where: exit $rc (${dt} s)"
        sed 's/^/       | /' "$b" | tail -n +2
        tail -n 15 "$dir.log" | sed 's/^/       > /'
    fi
    rm -rf "$dir"
done
echo "$pass passed, $fail failed"
[ $fail -eq 0 ]
