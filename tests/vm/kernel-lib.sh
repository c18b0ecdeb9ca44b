# shellcheck shell=bash
# Sourced by tests/vm/kernel.sh and tests/vm/debug-kernel.sh: their messages,
# and the guest kernel's release and package version.

log() { echo "$(basename "$0"): $*" >&2; }
die() {
	log "error: $*"
	exit 1
}

# guest_kernel_versions: sets KVER and PKGVER from the installed
# linux-headers-amd64, which depends on e.g.
# "linux-headers-6.1.0-56-amd64 (= 6.1.192-2)": KVER 6.1.0-56-amd64 (the
# release modules are built for) and PKGVER 6.1.192-2 (the source package's
# version, which linux-image-KVER and linux-source-6.1 share).
guest_kernel_versions() {
	local deps
	deps=$(dpkg-query -W -f='${Depends}' linux-headers-amd64 2>/dev/null) ||
		die "linux-headers-amd64 is not installed (run packaging/install-deps.sh)"
	KVER=$(sed -n 's/.*linux-headers-\([^ ,]*-amd64\).*/\1/p' <<<"$deps")
	PKGVER=$(sed -n 's/.*linux-headers-[^ ,]* (= \([^)]*\)).*/\1/p' <<<"$deps")
	[[ -n "$KVER" && -n "$PKGVER" ]] ||
		die "cannot derive the kernel release and package version from '$deps'"
}
