#!/bin/sh
# ddpm bench next to the same U-Net in PyTorch (scripts/bench_pytorch.py), with the same
# threads, steps and config, then a comparison table. `make bench` runs
#     PYTHON=$(PYTHON) sh scripts/bench.sh
# The two programs take turns: BENCH_ROUNDS rounds of (ddpm, then PyTorch), and every ratio
# reported is the median of the per-round ratios. The machines this runs on are shared: their
# speed drifts by 20-50 % over minutes, so two programs timed once each, minutes apart, can
# differ by that much for no reason of their own; rounds put both in each stretch of time.
# Environment:
#   PYTHON          interpreter with torch (default python3; Debian's is /usr/bin/python3)
#   BENCH_THREADS   threads for both (default: nproc)
#   BENCH_ROUNDS    rounds (default 3)
#   BENCH_STEPS     timed repetitions of each measurement per round (default 6)
#   BENCH_CONFIG    ddpm config (default configs/bench.json; `make bench CONFIG=...` sets it)
#   BENCH_SCALING   1 (default): also time ddpm with 1 thread, for the thread-scaling ratio
#                   (ddpm bench --scaling: every repetition on 1 thread right after its twin on
#                   BENCH_THREADS, in one process, and the median of the per-pair ratios)
#   BENCH_TORCH_ISA match (default): when ddpm is the AVX2 build (`make bench ISA=avx2`) on a
#                   CPU with AVX-512, PyTorch is kept to AVX2 as well (ONEDNN_MAX_CPU_ISA=AVX2,
#                   ATEN_CPU_CAPABILITY=avx2), so the two compare on the same instructions, as
#                   on an AVX2 CPU; native: PyTorch uses whatever the CPU has
# PyTorch runs with the OpenBLAS kernel ddpm used (its "blas_core"), unless OPENBLAS_CORETYPE
# is already set: OpenBLAS 0.3.21 misdetects some CPUs and ddpm corrects that for itself. Its
# memory format (channels_last or contiguous, the faster) is chosen in round 1 and kept.
# Without PyTorch (or Python) it prints ddpm's numbers and says so. Exit status: ddpm's if
# ddpm fails, otherwise 0.
PYTHON=${PYTHON:-python3}
THREADS=${BENCH_THREADS:-$(nproc 2>/dev/null || getconf _NPROCESSORS_ONLN 2>/dev/null || echo 1)}
ROUNDS=${BENCH_ROUNDS:-3}
STEPS=${BENCH_STEPS:-6}
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

scaling=""
[ "${BENCH_SCALING:-1}" = 1 ] && [ "$THREADS" -gt 1 ] && scaling=" --scaling"
core_note=""
isa_note=""
[ -n "${OPENBLAS_CORETYPE:-}" ] && core_note="OPENBLAS_CORETYPE=$OPENBLAS_CORETYPE set by the user, used for both"
fmt=auto
t_ok=0
skip_note="no working Python at PYTHON=$PYTHON"
: >"$tmp/rounds"
r=1
while [ $r -le "$ROUNDS" ]; do
    echo "bench round $r/$ROUNDS: $DDPM bench --config $CONFIG --threads $THREADS --steps $STEPS$scaling --json"
    "$DDPM" bench --config "$CONFIG" --threads "$THREADS" --steps "$STEPS"$scaling --json >"$tmp/ddpm.json"
    rc=$?
    if [ $rc -ne 0 ]; then
        echo "bench.sh: ddpm bench failed (exit $rc)" >&2
        exit $rc
    fi
    cp "$tmp/ddpm.json" "$tmp/ddpm$r.json"
    d_step=$(jget "$tmp/ddpm.json" train_step_s)
    d_fwd=$(jget "$tmp/ddpm.json" forward_s)
    if [ -z "$d_step" ] || [ -z "$d_fwd" ]; then
        echo "bench.sh: could not read ddpm bench's JSON output:" >&2
        cat "$tmp/ddpm.json" >&2
        exit 1
    fi
    if [ $r = 1 ] && [ -z "${OPENBLAS_CORETYPE:-}" ]; then
        d_core=$(jget "$tmp/ddpm.json" blas_core)
        if [ -n "$d_core" ]; then
            OPENBLAS_CORETYPE=$d_core
            export OPENBLAS_CORETYPE
            core_note="PyTorch run with OPENBLAS_CORETYPE=$d_core, the OpenBLAS kernel ddpm used (blas_core)"
        fi
    fi
    if [ $r = 1 ] && [ "$(jget "$tmp/ddpm.json" kernel_isa)" = avx2 ] && [ "${BENCH_TORCH_ISA:-match}" = match ] &&
        grep -qw avx512f /proc/cpuinfo 2>/dev/null; then
        ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2
        export ONEDNN_MAX_CPU_ISA ATEN_CPU_CAPABILITY
        isa_note="ddpm is the AVX2 build on a CPU with AVX-512: PyTorch kept to AVX2 too (ONEDNN_MAX_CPU_ISA=AVX2, ATEN_CPU_CAPABILITY=avx2; BENCH_TORCH_ISA=native lifts it)"
    fi
    t_step="" t_fwd="" t_rss=""
    if [ $have_python = 1 ] && { [ $r = 1 ] || [ $t_ok = 1 ]; }; then
        echo "bench round $r/$ROUNDS: $PYTHON scripts/bench_pytorch.py --config $CONFIG --threads $THREADS --steps $STEPS --memory-format $fmt --json"
        "$PYTHON" scripts/bench_pytorch.py --config "$CONFIG" --threads "$THREADS" --steps "$STEPS" --memory-format "$fmt" \
            --json >"$tmp/torch.json"
        trc=$?
        if [ $trc -eq 0 ] && grep -q '^{' "$tmp/torch.json"; then
            t_ok=1
            cp "$tmp/torch.json" "$tmp/torch$r.json"
            t_step=$(jget "$tmp/torch.json" train_step_s)
            t_fwd=$(jget "$tmp/torch.json" forward_s)
            t_rss=$(jget "$tmp/torch.json" peak_rss_mb)
            fmt=$(jget "$tmp/torch.json" memory_format)
        else
            t_ok=0
            if [ $trc -eq 0 ]; then skip_note=$(cat "$tmp/torch.json"); else skip_note="bench_pytorch.py failed (exit $trc)"; fi
        fi
    fi
    # one line per round: ddpm step, forward, RSS, ceiling, ceiling fraction; thread scaling
    # (training, forward, 1-thread step, 1-thread forward); PyTorch step, forward, RSS; "-" if none
    sc_vals="- - - -"
    [ -n "$scaling" ] && sc_vals="$(jget "$tmp/ddpm.json" scaling_train) $(jget "$tmp/ddpm.json" scaling_forward)
        $(jget "$tmp/ddpm.json" train_step_1t_s) $(jget "$tmp/ddpm.json" forward_1t_s)"
    echo $d_step $d_fwd $(jget "$tmp/ddpm.json" peak_rss_mb) $(jget "$tmp/ddpm.json" sgemm_gflops) \
        $(jget "$tmp/ddpm.json" ceiling_fraction) $sc_vals ${t_step:--} ${t_fwd:--} ${t_rss:--} >>"$tmp/rounds"
    r=$((r + 1))
done

d_batch=$(jget "$tmp/ddpm1.json" batch)
d_params=$(jget "$tmp/ddpm1.json" params)
d_core=$(jget "$tmp/ddpm1.json" blas_core)
d_cpu=$(jget "$tmp/ddpm1.json" cpu)
d_isa=$(jget "$tmp/ddpm1.json" kernel_isa)
gf_step=$(jget "$tmp/ddpm1.json" gflop_per_step)
gf_fwd=$(jget "$tmp/ddpm1.json" gflop_per_forward)
last_t=$(ls "$tmp"/torch[0-9]*.json 2>/dev/null | tail -n 1)

echo
echo "CPU: $d_cpu; ddpm kernels $d_isa, OpenBLAS core $d_core"
echo "bench $CONFIG: batch $d_batch, $d_params parameters, $THREADS threads, $ROUNDS rounds of $STEPS repetitions"
if [ -n "$last_t" ]; then
    t_params=$(jget "$last_t" params)
    t_ver=$(jget "$last_t" torch_version)
    t_fmt=$(jget "$last_t" memory_format)
    t_core=$(jget "$last_t" blas_core)
    t_threads=$(jget "$last_t" threads)
fi
# The table: per-round lines, then medians over rounds (a ratio's median is over the rounds'
# own ratios, so each ratio compares two timings of one stretch of time).
awk -v gs="$gf_step" -v gfw="$gf_fwd" -v ver="${t_ver:-}" -v th="$THREADS" -v sc="$scaling" '
function med(a, n,    i, j, t, b) {
    for (i = 1; i <= n; i++) b[i] = a[i]
    for (i = 2; i <= n; i++) for (j = i; j > 1 && b[j - 1] > b[j]; j--) { t = b[j]; b[j] = b[j - 1]; b[j - 1] = t }
    return n % 2 ? b[(n + 1) / 2] : (b[n / 2] + b[n / 2 + 1]) / 2
}
{
    n++; ds[n] = $1; df[n] = $2; ce[n] = $4; fr[n] = $5; ss[n] = $6; sf[n] = $7; s1[n] = $8; f1[n] = $9
    if ($3 > mdr) mdr = $3
    line = sprintf("  round %d: ddpm training %.3f s, forward %.3f s", n, $1, $2)
    if ($10 != "-") {
        m++; ts[m] = $10; tf[m] = $11; rs[m] = $10 / $1; rf[m] = $11 / $2; pf[m] = gs / $10 / $4
        if ($12 > mtr) mtr = $12
        line = line sprintf("; PyTorch %.3f s, %.3f s: %.2fx, %.2fx", $10, $11, rs[m], rf[m])
    }
    if (sc != "") line = line sprintf("; thread scaling %.2fx", $6)
    print line
}
END {
    mds = med(ds, n); mdf = med(df, n)
    if (m > 0) {
        mts = med(ts, m); mtf = med(tf, m)
        printf "  %-22s %12s %16s %14s\n", "median of the rounds", "ddpm", "PyTorch " ver, "PyTorch/ddpm"
        printf "  %-22s %10.3f s %14.3f s %13.2fx\n", "training step", mds, mts, med(rs, m)
        printf "  %-22s %10.3f s %14.3f s %13.2fx\n", "no-grad forward", mdf, mtf, med(rf, m)
        printf "  %-22s %8.1f GF/s %12.1f GF/s\n", "training throughput", gs / mds, gs / mts
        printf "  %-22s %8.1f GF/s %12.1f GF/s\n", "forward throughput", gfw / mdf, gfw / mtf
        printf "  %-22s %9.0f MB %13.0f MB %13.2fx\n", "peak RSS (largest)", mdr, mtr, mtr / mdr
        printf "  sgemm ceiling %.1f GFLOP/s (OpenBLAS 2048^3, %d threads): ddpm training step reaches %.0f%%, PyTorch %.0f%%\n",
            med(ce, n), th, 100 * med(fr, n), 100 * med(pf, m)
        print "  time ratio PyTorch/ddpm > 1 means ddpm is faster (median of the rounds'"'"' own ratios); GF/s are ddpm'"'"'s nominal FLOP count over each one'"'"'s time"
    } else {
        printf "  %-22s %12s\n", "median of the rounds", "ddpm"
        printf "  %-22s %10.3f s   %.1f GFLOP/s\n", "training step", mds, gs / mds
        printf "  %-22s %10.3f s   %.1f GFLOP/s\n", "no-grad forward", mdf, gfw / mdf
        printf "  %-22s %9.0f MB\n", "peak RSS (largest)", mdr
        printf "  sgemm ceiling %.1f GFLOP/s (OpenBLAS 2048^3, %d threads): ddpm training step reaches %.0f%%\n", med(ce, n), th,
            100 * med(fr, n)
    }
    if (sc != "") {
        printf "  thread scaling: training step 1 thread %.3f s, %d threads %.3f s: %.2fx; forward %.3f s -> %.3f s: %.2fx\n",
            med(s1, n), th, mds, med(ss, n), med(f1, n), mdf, med(sf, n)
        printf "  (median over rounds of the median per-repetition ratio; each 1-thread repetition runs right after its %d-thread twin)\n", th
    }
}' "$tmp/rounds"
if [ -n "$last_t" ]; then
    echo "  PyTorch: memory format $t_fmt (the faster of channels_last/contiguous here), $t_threads threads, OpenBLAS core $t_core"
    [ -n "$core_note" ] && echo "  $core_note"
    [ -n "$isa_note" ] && echo "  $isa_note"
    [ "$t_params" != "$d_params" ] && echo "  WARNING: parameter counts differ: ddpm $d_params, PyTorch $t_params"
    [ $t_ok = 1 ] || echo "  PyTorch failed in a later round: $skip_note"
else
    echo "  PyTorch skipped: $skip_note"
fi
r=1
while [ $r -le "$ROUNDS" ]; do
    echo "  round $r ddpm json:    $(cat "$tmp/ddpm$r.json")"
    [ -f "$tmp/torch$r.json" ] && echo "  round $r PyTorch json: $(cat "$tmp/torch$r.json")"
    r=$((r + 1))
done
exit 0
