#!/usr/bin/env bash
# Writes the header fuzz target's seeds (tests/fuzz/corpus/header/): LUKS2
# headers made by stock cryptsetup with the parameters `diskcrypt format`
# uses (agent/ops/format.cpp: 16 KiB metadata, 1 MiB header, PBKDF2-SHA256 at
# 1000 iterations, aes-xts-plain64 with a 512-bit key, subsystem "diskcrypt")
# and a diskcrypt-kms token, cut into the target's input layout
# (fuzz_header.cpp): flags byte, UUID (40), subsystem (48), label (48), JSON.
#
# Usage: tests/fuzz/make-header-seeds.sh [OUTDIR]   (needs cryptsetup, python3)
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
out=${1:-$here/corpus/header}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
mkdir -p "$out"

token='{"type":"diskcrypt-kms","keyslots":["0"],"version":1,
 "key":{"provider":"hsm","provider_type":"pkcs11","id":"disk-key-01","version":"1"},
 "wrap":{"alg":"AES-256-GCM","ad_version":1,"iv":"fPcY69dN+HApcnVX",
         "ciphertext":"aAgGKgHqcSlsmZUnHjZ5WvgyYzX72cwwM8T7dnZp5yY=","tag":"iYISvGGU306E4VU7doMIrQ=="},
 "disk":{"id":"fhm4c2b8r1d9q0x7","type":"network-ssd","lineage":"fhm4c2b8r1d9q0x7","service_account":"ajefv1n2b3"},
 "created":"2026-11-22T13:24:00Z"}'

# make NAME SECTOR_SIZE [extra luksFormat options...]
make() {
	local name=$1 sector=$2 img=$tmp/$1.img
	shift 2
	truncate -s 2M "$img"
	printf 'fuzz-seed-passphrase' >"$tmp/pass"
	cryptsetup luksFormat --batch-mode --type luks2 --key-file "$tmp/pass" \
		--luks2-metadata-size 16k --luks2-keyslots-size 992k --offset 2048 \
		--pbkdf pbkdf2 --hash sha256 --pbkdf-force-iterations 1000 \
		--cipher aes-xts-plain64 --key-size 512 --sector-size "$sector" \
		--subsystem diskcrypt "$@" "$img"
	printf '%s' "$token" | cryptsetup token import --token-id 0 --key-slot 0 "$img"
	python3 - "$img" "$out/$name" <<'PY'
import sys
img = open(sys.argv[1], 'rb').read(16384)
json = img[4096:].split(b'\0', 1)[0]
field = lambda at, n: img[at:at + n].split(b'\0', 1)[0].ljust(n, b'\0')
open(sys.argv[2], 'wb').write(b'\0' + field(168, 40) + field(208, 48) + field(24, 48) + json)
PY
}

make format-512 512
make format-4096 4096
# What an attacker edits in format-4096: each variant keeps a valid checksum
# (the target writes it) and must be refused or handled by the header checks.
python3 - "$out" <<'PY'
import json, sys
out = sys.argv[1]
seed = open(out + '/format-4096', 'rb').read()
prefix, meta = bytearray(seed[:137]), json.loads(seed[137:])

def variant(name, edit, fields=None):
    m = json.loads(json.dumps(meta))
    edit(m)
    p = bytearray(prefix)
    for at, n, value in fields or []:
        p[at:at + n] = value.ljust(n, b'\0')[:n]
    text = json.dumps(m, separators=(',', ':')).encode().replace(b'@FF@', b'\xff').replace(b'"@BIG@"', b'1e9999')
    open(out + '/' + name, 'wb').write(bytes(p) + text)

def kdf(m, **k):
    m['keyslots']['0']['kdf'].update(k)

variant('discards', lambda m: m['config'].__setitem__('flags', ['allow-discards']))
variant('pbkdf2-2e31', lambda m: kdf(m, iterations=2**31))
variant('argon2-4g', lambda m: m['keyslots']['0'].__setitem__('kdf', {
    'type': 'argon2id', 'time': 4, 'memory': 4194304, 'cpus': 4,
    'salt': m['keyslots']['0']['kdf']['salt']}))
variant('segment-sector-512-iv', lambda m: m['segments']['0'].update({'sector_size': 512, 'iv_tweak': '7'}))
variant('plugin-token', lambda m: m['tokens'].__setitem__('1', {'type': 'systemd-pkcs11', 'keyslots': ['0'],
                                                                 'pkcs11-uri': 'pkcs11:', 'pkcs11-key': ''}))
variant('subsystem-ff', lambda m: None, [(41, 48, b'\xff')])
variant('uuid-odd', lambda m: None, [(1, 40, b'../\x1b[31m')])
variant('token-number-overflow', lambda m: m['tokens']['0'].__setitem__('version', '@BIG@'))
variant('cipher-ff', lambda m: m['segments']['0'].__setitem__('encryption', 'aes-@FF@'))
PY
echo "wrote $(find "$out" -type f | wc -l) seeds to $out" >&2
