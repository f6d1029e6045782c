#!/bin/sh
# ddpm bench next to the same U-Net in PyTorch (scripts/bench_pytorch.py), one after the
# other with the same threads, steps and config, then a comparison table. `make bench` runs
#     PYTHON=$(PYTHON) sh scripts/bench.sh
# Environment:
#   PYTHON          interpreter with torch (default python3; Debian's is /usr/bin/python3)
#   BENCH_THREADS   threads for both (default: nproc)
#   BENCH_STEPS     timed repetitions of each measurement (default 10)
#   BENCH_CONFIG    ddpm config (default configs/bench.json; `make bench CONFIG=...` sets it)
#   BENCH_SCALING   1 (default): also time ddpm with 1 thread, for the thread-scaling ratio
# PyTorch runs with the OpenBLAS kernel ddpm used (its "blas_core"), unless OPENBLAS_CORETYPE
# is already set: OpenBLAS 0.3.21 misdetects some CPUs and ddpm corrects that for itself.
# Without PyTorch (or Python) it prints ddpm's numbers and says so. Exit status: ddpm's if
# ddpm fails, otherwise 0.
PYTHON=${PYTHON:-python3}
THREADS=${BENCH_THREADS:-$(nproc 2>/dev/null || getconf _NPROCESSORS_ONLN 2>/dev/null || echo 1)}
STEPS=${BENCH_STEPS:-10}
CONFIG=${BENCH_CONFIG:-configs/bench.json}
DDPM=${DDPM:-./ddpm}

tmp=$(mktemp -d "${TMPDIR:-/tmp}/ddpm-bench.XXXXXX") || exit 1
trap 'rm -rf "$tmp"' EXIT
trap 'exit 130' INT TERM

have_python=0
"$PYTHON" -c 'import json' >/dev/null 2>&1 && have_python=1

# jget FILE KEY: value of a top-level key of a one-line JSON object (strings unquoted).
jget() {
    if [ $have_python = 1 ]; then
        "$PYTHON" -c 'import json, sys
v = json.load(open(sys.argv[1])).get(sys.argv[2])
print("" if v is None else v)' "$1" "$2" 2>/dev/null
    else
        sed -n 's/.*"'"$2"'": *"\{0,1\}\([^",}]*\).*/\1/p' "$1" | head -n 1
    fi
}

echo "bench: $DDPM bench --config $CONFIG --threads $THREADS --steps $STEPS --json"
"$DDPM" bench --config "$CONFIG" --threads "$THREADS" --steps "$STEPS" --json >"$tmp/ddpm.json"
rc=$?
if [ $rc -ne 0 ]; then
    echo "bench.sh: ddpm bench failed (exit $rc)" >&2
    exit $rc
fi
d_step=$(jget "$tmp/ddpm.json" train_step_s)
d_fwd=$(jget "$tmp/ddpm.json" forward_s)
d_rss=$(jget "$tmp/ddpm.json" peak_rss_mb)
d_params=$(jget "$tmp/ddpm.json" params)
d_batch=$(jget "$tmp/ddpm.json" batch)
d_core=$(jget "$tmp/ddpm.json" blas_core)
d_frac=$(jget "$tmp/ddpm.json" ceiling_fraction)
d_ceil=$(jget "$tmp/ddpm.json" sgemm_gflops)
d_cpu=$(jget "$tmp/ddpm.json" cpu)
d_isa=$(jget "$tmp/ddpm.json" kernel_isa)
gf_step=$(jget "$tmp/ddpm.json" gflop_per_step)
gf_fwd=$(jget "$tmp/ddpm.json" gflop_per_forward)
if [ -z "$d_step" ] || [ -z "$d_fwd" ]; then
    echo "bench.sh: could not read ddpm bench's JSON output:" >&2
    cat "$tmp/ddpm.json" >&2
    exit 1
fi

# PyTorch, with the OpenBLAS kernel ddpm ran with.
core_note=""
if [ -n "${OPENBLAS_CORETYPE:-}" ]; then
    core_note="OPENBLAS_CORETYPE=$OPENBLAS_CORETYPE set by the user, used for both"
elif [ -n "$d_core" ]; then
    OPENBLAS_CORETYPE=$d_core
    export OPENBLAS_CORETYPE
    core_note="PyTorch run with OPENBLAS_CORETYPE=$d_core, the OpenBLAS kernel ddpm used (blas_core)"
fi
t_ok=0
if [ $have_python = 1 ]; then
    [ -n "$core_note" ] && echo "bench: $core_note"
    echo "bench: $PYTHON scripts/bench_pytorch.py --config $CONFIG --threads $THREADS --steps $STEPS --json"
    "$PYTHON" scripts/bench_pytorch.py --config "$CONFIG" --threads "$THREADS" --steps "$STEPS" --json >"$tmp/torch.json"
    trc=$?
    if [ $trc -eq 0 ] && grep -q '^{' "$tmp/torch.json"; then
        t_ok=1
        skip_note=""
    elif [ $trc -eq 0 ]; then
        skip_note=$(cat "$tmp/torch.json")
    else
        skip_note="bench_pytorch.py failed (exit $trc)"
    fi
else
    skip_note="no working Python at PYTHON=$PYTHON"
fi

# ddpm again on one thread: how much the second and later threads buy.
s_ok=0
if [ "${BENCH_SCALING:-1}" = 1 ] && [ "$THREADS" -gt 1 ]; then
    echo "bench: $DDPM bench --config $CONFIG --threads 1 --steps $STEPS --json"
    if "$DDPM" bench --config "$CONFIG" --threads 1 --steps "$STEPS" --json >"$tmp/ddpm1.json"; then
        s_step=$(jget "$tmp/ddpm1.json" train_step_s)
        s_fwd=$(jget "$tmp/ddpm1.json" forward_s)
        [ -n "$s_step" ] && s_ok=1
    fi
fi

echo
echo "CPU: $d_cpu; ddpm kernels $d_isa, OpenBLAS core $d_core"
if [ $t_ok = 1 ]; then
    t_step=$(jget "$tmp/torch.json" train_step_s)
    t_fwd=$(jget "$tmp/torch.json" forward_s)
    t_rss=$(jget "$tmp/torch.json" peak_rss_mb)
    t_params=$(jget "$tmp/torch.json" params)
    t_ver=$(jget "$tmp/torch.json" torch_version)
    t_fmt=$(jget "$tmp/torch.json" memory_format)
    t_core=$(jget "$tmp/torch.json" blas_core)
    t_threads=$(jget "$tmp/torch.json" threads)
    echo "bench $CONFIG: batch $d_batch, $d_params parameters, $THREADS threads, median of $STEPS"
    awk -v ds="$d_step" -v df="$d_fwd" -v dr="$d_rss" -v ts="$t_step" -v tf="$t_fwd" -v tr="$t_rss" \
        -v gs="$gf_step" -v gfw="$gf_fwd" -v ver="$t_ver" 'BEGIN {
        printf "  %-22s %12s %16s %14s\n", "", "ddpm", "PyTorch " ver, "PyTorch/ddpm"
        printf "  %-22s %10.3f s %14.3f s %13.2fx\n", "training step", ds, ts, ts / ds
        printf "  %-22s %10.3f s %14.3f s %13.2fx\n", "no-grad forward", df, tf, tf / df
        printf "  %-22s %8.1f GF/s %12.1f GF/s\n", "training throughput", gs / ds, gs / ts
        printf "  %-22s %8.1f GF/s %12.1f GF/s\n", "forward throughput", gfw / df, gfw / tf
        printf "  %-22s %9.0f MB %13.0f MB %13.2fx\n", "peak RSS", dr, tr, tr / dr
    }'
    awk -v f="$d_frac" -v c="$d_ceil" -v gs="$gf_step" -v ts="$t_step" -v th="$THREADS" 'BEGIN {
        printf "  sgemm ceiling %.1f GFLOP/s (OpenBLAS 2048^3, %d threads): ddpm training step reaches %.0f%%, PyTorch %.0f%%\n",
            c, th, 100 * f, 100 * gs / ts / c
    }'
    echo "  time ratio PyTorch/ddpm > 1 means ddpm is faster; GF/s are ddpm's nominal FLOP count over each one's time"
    echo "  PyTorch: memory format $t_fmt (the faster of channels_last/contiguous here), $t_threads threads, OpenBLAS core $t_core"
    [ -n "$core_note" ] && echo "  $core_note"
    [ "$t_params" != "$d_params" ] && echo "  WARNING: parameter counts differ: ddpm $d_params, PyTorch $t_params"
else
    echo "bench $CONFIG: batch $d_batch, $d_params parameters, $THREADS threads, median of $STEPS"
    awk -v ds="$d_step" -v df="$d_fwd" -v dr="$d_rss" -v gs="$gf_step" -v gfw="$gf_fwd" 'BEGIN {
        printf "  %-22s %12s\n", "", "ddpm"
        printf "  %-22s %10.3f s   %.1f GFLOP/s\n", "training step", ds, gs / ds
        printf "  %-22s %10.3f s   %.1f GFLOP/s\n", "no-grad forward", df, gfw / df
        printf "  %-22s %9.0f MB\n", "peak RSS", dr
    }'
    awk -v f="$d_frac" -v c="$d_ceil" -v th="$THREADS" 'BEGIN {
        printf "  sgemm ceiling %.1f GFLOP/s (OpenBLAS 2048^3, %d threads): ddpm training step reaches %.0f%%\n", c, th, 100 * f
    }'
    echo "  PyTorch skipped: $skip_note"
fi
if [ $s_ok = 1 ]; then
    awk -v a="$s_step" -v b="$d_step" -v c="$s_fwd" -v d="$d_fwd" -v th="$THREADS" 'BEGIN {
        printf "  thread scaling: training step 1 thread %.3f s, %d threads %.3f s: %.2fx; forward %.3f s -> %.3f s: %.2fx\n",
            a, th, b, a / b, c, d, c / d
    }'
fi
echo "  ddpm json:    $(cat "$tmp/ddpm.json")"
[ $s_ok = 1 ] && echo "  ddpm 1-thread json: $(cat "$tmp/ddpm1.json")"
[ $t_ok = 1 ] && echo "  PyTorch json: $(cat "$tmp/torch.json")"
exit 0
