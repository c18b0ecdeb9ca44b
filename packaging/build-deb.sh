#!/usr/bin/env bash
# Build diskcrypt's Debian packages (diskcrypt, diskcrypt-dkms) and check them
# with lintian.
#
# Usage: packaging/build-deb.sh [OUT_DIR]
#   OUT_DIR   where the .deb, .buildinfo and .changes files go
#             (default $DISKCRYPT_BUILD/deb, DISKCRYPT_BUILD defaulting to build/)
#
# The tree's top level has no debian/ folder (its layout is fixed): the tracked
# files of the working tree are copied to OUT_DIR/src/diskcrypt-VERSION,
# packaging/debian becomes its debian/, and `dpkg-buildpackage -b -uc -us`
# builds there, as on any Debian 12 machine with the build dependencies
# (packaging/install-deps.sh installs them). lintian then runs on the result:
# an error fails the build; warnings and informational tags are printed and
# the expected ones are explained in packaging/debian/README.source.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
out=${1:-${DISKCRYPT_BUILD:-$ROOT/build}/deb}
log() { echo "build-deb.sh: $*" >&2; }

version=$(dpkg-parsechangelog -l "$ROOT/packaging/debian/changelog" -S Version)
src=$out/src/diskcrypt-$version
rm -rf "$out/src"
mkdir -p "$src"
rm -f "$out"/diskcrypt*_"$version"_*.{deb,buildinfo,changes}
if git -C "$ROOT" rev-parse --is-inside-work-tree >/dev/null 2>&1; then
	git -C "$ROOT" ls-files -z | (cd "$ROOT" && tar --null -T - -cf -) | tar -xf - -C "$src"
else
	tar -C "$ROOT" --exclude=./build -cf - . | tar -xf - -C "$src"
fi
cp -R "$ROOT/packaging/debian" "$src/debian"

log "dpkg-buildpackage in $src (log: $out/build.log)"
start=$(date +%s)
if ! (cd "$src" && dpkg-buildpackage -b -uc -us -j"$(nproc)") >"$out/build.log" 2>&1; then
	tail -40 "$out/build.log" >&2
	log "error: dpkg-buildpackage failed (log: $out/build.log)"
	exit 1
fi
log "built in $(($(date +%s) - start)) s: $(cd "$out/src" && ls -- *.deb | tr '\n' ' ')"

changes=$out/src/diskcrypt_${version}_$(dpkg --print-architecture).changes
mv "$out"/src/*.deb "$out"/src/*.buildinfo "$changes" "$out/"
changes=$out/$(basename "$changes")
# lintian: errors fail; everything else is shown.
lintian_out=$(lintian --display-info --fail-on error "$changes" 2>&1) || {
	echo "$lintian_out" >&2
	log "error: lintian reports errors"
	exit 1
}
echo "$lintian_out" | sed 's/^/lintian: /'
log "lintian: $(grep -c '^E:' <<<"$lintian_out" || true) errors, $(grep -c '^W:' <<<"$lintian_out" || true) warnings, $(grep -c '^I:' <<<"$lintian_out" || true) informational tags"
