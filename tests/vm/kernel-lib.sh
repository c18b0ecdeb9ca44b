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

# install_modules STAGE KTREE KVER MODULE...: the guest kernel's in-tree
# modules with their dependencies (ignoring the host's modprobe.d), copied
# from the kernel tree KTREE into STAGE, with the index files depmod needs. A
# module built into the kernel (modules.builtin) copies nothing; a module that
# is neither is an error.
install_modules() {
	local stage=$1 ktree=$2 kver=$3 mod ko rel f
	shift 3
	for mod in "$@"; do
		modprobe -C /dev/null -S "$kver" -d "$ktree" --show-depends "$mod" ||
			die "module $mod not found in $ktree"
	done | awk '$1 == "insmod" { print $2 }' | LC_ALL=C sort -u | while read -r ko; do
		rel=${ko#"$ktree"/}
		mkdir -p "$stage/$(dirname "$rel")"
		cp "$ko" "$stage/$rel"
	done
	mkdir -p "$stage/lib/modules/$kver"
	for f in modules.order modules.builtin modules.builtin.modinfo; do
		cp "$ktree/lib/modules/$kver/$f" "$stage/lib/modules/$kver/"
	done
}
