#!/usr/bin/env bash
# The packaging suite: the Debian packages build and pass lintian, hold what
# they should, DKMS builds the module from diskcrypt-dkms against Debian 12's
# headers, and `make install DESTDIR=...` installs a working tree of files.
# Its outputs (the packages and the DKMS-built module) are what the systemd
# guest installs (tests/systemd/run.sh).
#
# Usage: tests/packaging/run.sh
# Environment: DISKCRYPT_BUILD (default <repo>/build); MAKE_INSTALL_ARGS, extra
# arguments for the `make install` check (make check passes the build type);
# DEBS_PREBUILT=1: packaging/build-deb.sh has already built the packages into
# $DISKCRYPT_BUILD/deb (make check runs it in the background) and succeeded,
# so they are checked, not built again.
# Exit status: 0 passed, 1 a check failed.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
BUILD=${DISKCRYPT_BUILD:-$ROOT/build}
OUT=$BUILD/deb
failures=0 passes=0
pass() {
	echo "PASS packaging/$1"
	passes=$((passes + 1))
}
fail() {
	echo "FAIL packaging/$1: $2" >&2
	failures=$((failures + 1))
}

# 1. The packages, lintian included.
version=$(dpkg-parsechangelog -l "$ROOT/packaging/debian/changelog" -S Version)
arch=$(dpkg --print-architecture)
deb=$OUT/diskcrypt_${version}_$arch.deb
dkms_deb=$OUT/diskcrypt-dkms_${version}_all.deb
if [[ "${DEBS_PREBUILT:-0}" == 1 ]]; then
	if [[ -f "$deb" && -f "$dkms_deb" && -f "$OUT/build.log" ]]; then
		pass "build-and-lintian (built before, DEBS_PREBUILT=1)"
	else
		fail build-and-lintian "DEBS_PREBUILT=1 but $deb, $dkms_deb or $OUT/build.log is missing"
		exit 1
	fi
else
	"$ROOT/packaging/build-deb.sh" "$OUT" && pass build-and-lintian || {
		fail build-and-lintian "packaging/build-deb.sh failed"
		exit 1
	}
fi
# The package build compiles one file at a time without -Werror (as a
# distribution builds it); here any compiler warning in it is a failure.
if warnings=$(grep -E '^[^ ]+:[0-9]+:[0-9]+: warning: ' "$OUT/build.log"); then
	fail build-warning-free "the package build warned (log: $OUT/build.log):"$'\n'"$warnings"
else
	pass build-warning-free
fi

# 2. What they hold.
contents=$(dpkg-deb -c "$deb" | awk '{ print $6 }' | sed 's|^\./|/|')
for f in /usr/sbin/diskcrypt-agent /usr/sbin/diskcrypt \
	/lib/x86_64-linux-gnu/cryptsetup/libcryptsetup-token-diskcrypt-kms.so \
	/lib/systemd/system/diskcrypt-agent.service /lib/systemd/system/diskcrypt-agent.socket \
	/lib/systemd/system/diskcrypt-attach@.service /lib/udev/rules.d/70-diskcrypt-attach.rules \
	/lib/udev/rules.d/12-diskcrypt.rules /usr/lib/tmpfiles.d/diskcrypt.conf \
	/usr/share/bash-completion/completions/diskcrypt \
	/usr/share/man/man8/diskcrypt.8.gz /usr/share/man/man8/diskcrypt-agent.8.gz \
	/usr/share/man/man5/diskcrypt-agent.toml.5.gz /usr/share/man/man5/diskcrypt-policy.toml.5.gz \
	/usr/share/doc/diskcrypt/examples/agent.toml.example /usr/share/doc/diskcrypt/copyright; do
	grep -qxF "$f" <<<"$contents" || fail contents "diskcrypt_${version}_$arch.deb lacks $f"
done
service=$(dpkg-deb --fsys-tarfile "$deb" | tar -xOf - ./lib/systemd/system/diskcrypt-agent.service)
grep -qx 'ExecStart=/usr/sbin/diskcrypt-agent --config /etc/diskcrypt/agent.toml' <<<"$service" ||
	fail contents "the packaged unit does not start /usr/sbin/diskcrypt-agent"
dkms_contents=$(dpkg-deb -c "$dkms_deb" | awk '{ print $6 }' | sed 's|^\./|/|')
for f in dkms.conf Kbuild target.c diskcrypt.h; do
	grep -qxF "/usr/src/diskcrypt-$version/$f" <<<"$dkms_contents" || fail contents "diskcrypt-dkms lacks /usr/src/diskcrypt-$version/$f"
done
dpkg-deb -f "$dkms_deb" Depends | grep -q dkms || fail contents "diskcrypt-dkms does not depend on dkms"
((failures)) || pass contents

# 3. DKMS builds the module from the package's source, for the guest's kernel,
# in a DKMS tree of its own: nothing is installed on this machine, but DKMS
# makes its module signing key (/var/lib/dkms/mok.key) on first use, as on
# any Debian host.
kver=$("$ROOT/tests/vm/kernel.sh")
work=$OUT/dkms
rm -rf "$work"
mkdir -p "$work/root" "$work/tree"
dpkg-deb -x "$dkms_deb" "$work/root"
dkms_args=(-m diskcrypt -v "$version" -k "$kver" --sourcetree "$work/root/usr/src" --dkmstree "$work/tree")
if dkms add "${dkms_args[@]}" >"$work/dkms.log" 2>&1 &&
	dkms build "${dkms_args[@]}" --kernelsourcedir "/lib/modules/$kver/build" >>"$work/dkms.log" 2>&1; then
	ko=$(find "$work/tree/diskcrypt/$version/$kver" -name 'dm-diskcrypt.ko*' | head -n 1)
	magic=$(modinfo -F vermagic "$ko" 2>/dev/null || true)
	if [[ -n "$ko" && "${magic%% *}" == "$kver" ]]; then
		cp "$ko" "$OUT/dm-diskcrypt.ko"
		pass "dkms-build ($kver)"
	else
		fail dkms-build "no module for $kver in the DKMS tree (found '${ko:-none}', vermagic '$magic')"
	fi
else
	tail -30 "$work/dkms.log" >&2
	fail dkms-build "dkms add/build failed (log: $work/dkms.log)"
fi

# 4. make install with DESTDIR, for people without packages.
dest=$BUILD/install-test
rm -rf "$dest"
# shellcheck disable=SC2086 # MAKE_INSTALL_ARGS is a list of make arguments
if make -C "$ROOT" -s install DESTDIR="$dest" ${MAKE_INSTALL_ARGS:-} >"$BUILD/install-test.log" 2>&1; then
	for f in /usr/local/sbin/diskcrypt-agent /usr/local/sbin/diskcrypt \
		/usr/local/lib/systemd/system/diskcrypt-agent.service /usr/local/lib/udev/rules.d/12-diskcrypt.rules \
		/usr/local/lib/tmpfiles.d/diskcrypt.conf /usr/local/share/man/man8/diskcrypt.8 \
		/lib/x86_64-linux-gnu/cryptsetup/libcryptsetup-token-diskcrypt-kms.so \
		"/lib/modules/$kver/updates/dm-diskcrypt.ko"; do
		[[ -e "$dest$f" ]] || fail make-install "DESTDIR=$dest: $f is missing"
	done
	grep -qx 'ExecStart=/usr/local/sbin/diskcrypt-agent --config /etc/diskcrypt/agent.toml' \
		"$dest/usr/local/lib/systemd/system/diskcrypt-agent.service" ||
		fail make-install "the installed unit does not start /usr/local/sbin/diskcrypt-agent"
	"$dest/usr/local/sbin/diskcrypt-agent" --version >/dev/null || fail make-install "the installed agent does not run"
	[[ $failures -gt 0 ]] || pass make-install
else
	tail -20 "$BUILD/install-test.log" >&2
	fail make-install "make install DESTDIR=$dest failed (log: $BUILD/install-test.log)"
fi

# 5. The man pages render without groff warnings.
warn=""
for page in "$dest"/usr/local/share/man/man*/*; do
	w=$(LC_ALL=C.UTF-8 MANWIDTH=80 man --warnings -l "$page" 2>&1 >/dev/null || true)
	[[ -z "$w" ]] || warn+="$(basename "$page"): $w; "
done
[[ -z "$warn" ]] && pass man-render || fail man-render "$warn"

echo "packaging: $passes passed, $failures failed"
((failures == 0))
