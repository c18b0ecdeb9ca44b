#!/usr/bin/env bash
# Checks the OpenSSL reference tool itself against IEEE P1619 vector 10
# (XTS-AES-256, data unit 0xff = plain64 IV sector 255), both directions.
# Usage: xts_ref_selftest.sh XTS_REF VECTOR_FILE
set -euo pipefail
ref=$1 vec=$2
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
for f in key ptx ctx; do
	awk -v f="$f" '$1 == f { print $2 }' "$vec" | perl -ne 'chomp; print pack("H*", $_)' >"$tmp/$f"
done
"$ref" --key "$tmp/key" --image "$tmp/ptx" --dev-offset 0 --length 512 --sector-size 512 \
	--iv-offset 255 --encrypt --out "$tmp/enc"
"$ref" --key "$tmp/key" --image "$tmp/ctx" --dev-offset 0 --length 512 --sector-size 512 \
	--iv-offset 255 --decrypt --out "$tmp/dec"
cmp "$tmp/enc" "$tmp/ctx" && cmp "$tmp/dec" "$tmp/ptx"
# A wrong IV must not give the vector's ciphertext.
"$ref" --key "$tmp/key" --image "$tmp/ptx" --dev-offset 0 --length 512 --sector-size 512 \
	--iv-offset 254 --encrypt --out "$tmp/wrong"
! cmp -s "$tmp/wrong" "$tmp/ctx"
# Bad arguments exit 2.
rc=0
"$ref" --key "$tmp/key" --image "$tmp/ptx" --length 100 --encrypt --out "$tmp/x" 2>/dev/null || rc=$?
[ "$rc" = 2 ]
echo "xts-ref matches IEEE P1619 vector 10"
