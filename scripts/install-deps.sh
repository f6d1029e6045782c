#!/bin/sh
# Installs the Debian packages ddpm needs, only those missing.
#   scripts/install-deps.sh          build + test + demo dependencies
#   scripts/install-deps.sh --mpi    also Open MPI (for make MPI=1)
#   scripts/install-deps.sh --fuzz   also clang with libFuzzer (only for make fuzz)
#   scripts/install-deps.sh --torch  also PyTorch (only for scripts/ fixtures and make bench)
# As root it runs apt-get; otherwise it prints the exact command and exits 1.
set -e
pkgs="libopenblas-openmp-dev libcjson-dev libstb-dev zlib1g-dev libcairo2-dev libfontconfig-dev nettle-dev fonts-dejavu-core pkg-config dataset-fashion-mnist"
for a in "$@"; do
    case "$a" in
        --mpi) pkgs="$pkgs openmpi-bin libopenmpi-dev" ;;
        --torch) pkgs="$pkgs python3-torch" ;;
        --fuzz) pkgs="$pkgs clang libclang-rt-14-dev" ;;
        *) echo "install-deps.sh: unknown option $a (use --mpi, --fuzz or --torch)" >&2; exit 2 ;;
    esac
done
missing=""
for p in $pkgs; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
[ -z "$missing" ] && exit 0
echo "install-deps.sh: missing Debian packages:$missing" >&2
if [ "$(id -u)" -ne 0 ]; then
    echo "install-deps.sh: run: sudo apt-get update && sudo apt-get install -y$missing" >&2
    exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq >&2
apt-get install -y -qq $missing >&2
