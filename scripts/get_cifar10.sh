#!/bin/sh
# Downloads the CIFAR-10 binary version (~163 MB) and unpacks it to data/cifar-10-batches-bin/,
# where configs/cifar.json looks (data.path = "data/cifar-10-batches-bin").
#   scripts/get_cifar10.sh            download into data/ (next to this repository's Makefile)
#   scripts/get_cifar10.sh DIR        download into DIR instead (DIR/cifar-10-batches-bin/)
# The archive is downloaded to a temporary name, its MD5 checked, then unpacked into a
# temporary folder and moved into place, so an interrupted run never leaves half a file.
set -eu

URL="https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz"
MD5="c32a1d4ab5d03f1284b67883e8d87530"
NAME="cifar-10-batches-bin"

here=$(cd "$(dirname "$0")/.." && pwd)
dest=${1:-"$here/data"}
say() { echo "get_cifar10.sh: $*" >&2; }
die() { say "$*"; exit 1; }

if [ -f "$dest/$NAME/data_batch_1.bin" ] && [ -f "$dest/$NAME/data_batch_5.bin" ]; then
    say "$dest/$NAME already exists; nothing to do (delete it to download again)"
    exit 0
fi

mkdir -p "$dest" || die "cannot create $dest"
archive="$dest/cifar-10-binary.tar.gz"
part="$archive.part.$$"
unpack="$dest/.cifar-unpack.$$"
cleanup() { rm -rf "$part" "$unpack"; }
trap cleanup EXIT
trap 'exit 1' INT TERM HUP

for tool in tar gzip; do
    command -v "$tool" >/dev/null 2>&1 || die "$tool is required (apt-get install $tool)"
done
if command -v md5sum >/dev/null 2>&1; then
    md5_of() { md5sum "$1" | cut -d" " -f1; }
elif command -v md5 >/dev/null 2>&1; then
    md5_of() { md5 -q "$1"; }
else
    die "md5sum is required to verify the download (apt-get install coreutils)"
fi

if [ -f "$archive" ] && [ "$(md5_of "$archive")" = "$MD5" ]; then
    say "using the already downloaded $archive"
else
    rm -f "$archive"
    say "downloading $URL (about 163 MB)"
    if command -v curl >/dev/null 2>&1; then
        curl -fL --retry 3 -o "$part" "$URL" || die "download failed; check your connection and run this script again"
    elif command -v wget >/dev/null 2>&1; then
        wget -O "$part" "$URL" || die "download failed; check your connection and run this script again"
    else
        die "neither curl nor wget found (apt-get install curl)"
    fi
    got=$(md5_of "$part")
    [ "$got" = "$MD5" ] || die "MD5 mismatch: got $got, expected $MD5 (corrupt download; run this script again)"
    mv "$part" "$archive"
fi

say "unpacking into $dest/$NAME"
mkdir -p "$unpack"
tar -xzf "$archive" -C "$unpack" || die "cannot unpack $archive (delete it and run this script again)"
[ -f "$unpack/$NAME/data_batch_1.bin" ] || die "$archive does not contain $NAME/data_batch_1.bin"
rm -rf "${dest:?}/${NAME:?}"
mv "$unpack/$NAME" "$dest/$NAME"
rm -f "$archive"
say "done: $dest/$NAME"
say "train with: ./ddpm train --config configs/cifar.json"
