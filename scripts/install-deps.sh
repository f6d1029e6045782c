#!/bin/sh
# Installs the Debian packages ddpm needs, only those missing.
#   scripts/install-deps.sh          build + test + demo dependencies
#   scripts/install-deps.sh --build  only what compiling needs (no font, no dataset)
#   scripts/install-deps.sh --mpi    also Open MPI (for make MPI=1)
#   scripts/install-deps.sh --fuzz   also clang with libFuzzer (only for make fuzz)
#   scripts/install-deps.sh --torch  also PyTorch (only for scripts/ fixtures and make bench)
#   scripts/install-deps.sh --arm64  also the aarch64 cross compiler, qemu-user and the arm64
#                                    libraries (only for make test-arm64; adds dpkg's arm64 arch)
# As root it runs apt-get; otherwise it prints the exact command and exits 1.
set -e
pkgs="libopenblas-openmp-dev libcjson-dev libstb-dev zlib1g-dev libcairo2-dev libfontconfig-dev nettle-dev pkg-config"
run="fonts-dejavu-core dataset-fashion-mnist"
for a in "$@"; do [ "$a" = --build ] && run=""; done
pkgs="$pkgs $run"
for a in "$@"; do
    case "$a" in
        --build) ;;
        --mpi) pkgs="$pkgs openmpi-bin libopenmpi-dev" ;;
        --torch) pkgs="$pkgs python3-torch" ;;
        --fuzz) pkgs="$pkgs clang libclang-rt-14-dev" ;;
        --arm64) arm64=1; pkgs="$pkgs gcc-aarch64-linux-gnu qemu-user libc6:arm64 libgomp1:arm64 pkg-config:arm64 libopenblas-openmp-dev:arm64 libcjson-dev:arm64 libstb-dev:arm64 zlib1g-dev:arm64 libcairo2-dev:arm64 libfontconfig-dev:arm64 nettle-dev:arm64" ;;
        *) echo "install-deps.sh: unknown option $a (use --build, --mpi, --fuzz, --torch or --arm64)" >&2; exit 2 ;;
    esac
done
missing=""
for p in $pkgs; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
[ -z "$missing" ] && exit 0
echo "install-deps.sh: missing Debian packages:$missing" >&2
if [ "$(id -u)" -ne 0 ]; then
    [ -n "$arm64" ] && echo "install-deps.sh: run: sudo dpkg --add-architecture arm64" >&2
    echo "install-deps.sh: run: sudo apt-get update && sudo apt-get install -y$missing" >&2
    exit 1
fi
export DEBIAN_FRONTEND=noninteractive
if [ -n "$arm64" ] && ! dpkg --print-foreign-architectures | grep -qx arm64; then dpkg --add-architecture arm64; fi
apt-get update -qq >&2
apt-get install -y -qq $missing >&2
