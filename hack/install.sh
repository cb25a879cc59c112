#!/usr/bin/env bash
# Bring a bare Debian 12 (bookworm) machine to everything cntrlive-runtime's
# tests, demo and benchmarks need. Idempotent: every step checks first and is
# skipped when its result is already there, so a second run takes seconds.
#
#   hack/install.sh            everything
#   SKIP_VM_TOOLING=1 hack/install.sh   without qemu/kernel/virtme-ng
#   CNTRLIVE_DYNAMIC=1 hack/install.sh  the runtime linked dynamically (by
#                                       default it is static: .cargo/config.toml)
#
# What and why (see docs/environment.md):
#   - CRIU 4.2.1 built from Debian's upstream tarball: bookworm's 3.17 fails
#     `criu check` on this kernel, trixie's 4.1.1 cannot dump INET sockets on
#     kernels >= 6.16. Built twice: with GnuTLS (/usr/local/sbin/criu) and
#     without (for our sessions that cannot use TLS: a faster start).
#   - iptables (CRIU's default network lock), containerd, docker.io, runc (the
#     peer we compare against), busybox-static (the test rootfs).
#   - qemu-system-x86 + linux-image-amd64 (6.1, soft-dirty) + virtme-ng for
#     pre-dump tests on a second kernel.
#   - the Rust build of cntrlive-runtime itself (statically linked, at
#     target/x86_64-unknown-linux-gnu/release/cntrlive-runtime).
set -euo pipefail

CRIU_VERSION=4.2.1
PREFIX=${CNTRLIVE_PREFIX:-/opt/cntrlive}
TOP=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
export DEBIAN_FRONTEND=noninteractive

log() { printf '[install] %s\n' "$*" >&2; }

need_root() {
	if [ "$(id -u)" != 0 ]; then
		echo "hack/install.sh must run as root (it installs packages and builds CRIU)" >&2
		exit 1
	fi
}

APT_UPDATED=0
apt_update_once() {
	if [ "$APT_UPDATED" = 0 ]; then
		log "apt-get update"
		apt-get update -qq
		APT_UPDATED=1
	fi
}

# Install the Debian packages that are not installed yet.
apt_install() {
	local missing=()
	local p
	for p in "$@"; do
		dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
	done
	if [ ${#missing[@]} -gt 0 ]; then
		apt_update_once
		log "apt-get install ${missing[*]}"
		apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
	fi
}

install_packages() {
	apt_install ca-certificates xz-utils dpkg-dev build-essential pkg-config \
		libprotobuf-c-dev libprotobuf-dev protobuf-c-compiler protobuf-compiler python3-protobuf \
		libnl-3-dev libnet1-dev libcap-dev libbsd-dev libgnutls28-dev \
		libaio-dev libnftables-dev uuid-dev libseccomp-dev zlib1g-dev libmd-dev libdrm-dev \
		file iptables iproute2 procps psmisc util-linux kmod \
		containerd runc docker.io busybox-static jq hyperfine time
}

# Two builds of one CRIU source: /usr/local/sbin/criu (what runc and every
# other caller runs, with GnuTLS for TLS page servers) and, for
# cntrlive-runtime's sessions that cannot use TLS (config key criu.lean),
# the same CRIU built without it at $CRIU_LEAN (NO_GNUTLS=1), linked at a
# fixed address with the small libraries it needs linked in (protobuf-c,
# nl-3, net, uuid, bsd + md: lean_static_libs): 7 shared libraries instead
# of 21, its start ~2 ms shorter than criu's here (docs/criu-engine.md,
# docs/performance.md). Not without libnftables: such a CRIU neither dumps
# nor restores a network namespace's nftables rules (a docker
# container's); Debian ships libnftables and its libraries shared only.
# Both get one SOURCE_DATE_EPOCH: it is part of the magic of CRIU's
# kernel-facts cache, which both must read (criu/kdat.rs).
CRIU_LEAN=/usr/local/libexec/cntrlive/criu-lean
CRIU_PAIR=/usr/local/libexec/cntrlive/criu-pair

# The recipe's tag (what the lean build leaves out) is part of the stamp: a
# pair built by another recipe is built again.
CRIU_LEAN_RECIPE=no-gnutls,static-libs,no-pie

# A directory of static libraries (and a linker script for libbsd, which
# needs libmd) that the lean CRIU's link finds before the shared ones: GNU
# ld takes the first directory that has lib<name>.so or lib<name>.a.
lean_static_libs() {
	local dir=$1 lib multiarch
	multiarch=/usr/lib/$(dpkg-architecture -qDEB_HOST_MULTIARCH)
	mkdir -p "$dir"
	for lib in protobuf-c nl-3 net uuid bsd md; do
		if [ ! -f "$multiarch/lib$lib.a" ]; then
			echo "$multiarch/lib$lib.a is missing (its -dev package installs it)" >&2
			exit 1
		fi
	done
	for lib in protobuf-c nl-3 net uuid; do
		ln -sf "$multiarch/lib$lib.a" "$dir/lib$lib.a"
	done
	echo "GROUP ( $multiarch/libbsd.a $multiarch/libmd.a )" >"$dir/libbsd.so"
}

criu_pair_stamp() {
	echo "$CRIU_VERSION $CRIU_LEAN_RECIPE $(stat -c %Y /usr/local/sbin/criu 2>/dev/null) $(stat -c %Y "$CRIU_LEAN" 2>/dev/null)"
}

install_criu() {
	if [ -x /usr/local/sbin/criu ] && [ -x "$CRIU_LEAN" ] &&
		/usr/local/sbin/criu --version 2>/dev/null | grep -q "Version: ${CRIU_VERSION}\$" &&
		[ "$(cat "$CRIU_PAIR" 2>/dev/null)" = "$(criu_pair_stamp)" ]; then
		return
	fi
	local src=$PREFIX/src
	mkdir -p "$src"
	local tarball=$src/criu_${CRIU_VERSION}.orig.tar.xz
	if [ ! -s "$tarball" ]; then
		# Debian serves the upstream tarball of sid's criu through deb-src;
		# the .debian.tar.xz part is not served here, so apt fails after
		# fetching (and hash-checking) the orig tarball: we only need that.
		local list=/etc/apt/sources.list.d/cntrlive-sid-src.sources
		if [ ! -f "$list" ]; then
			cat >"$list" <<SRC
Types: deb-src
URIs: http://deb.debian.org/debian
Suites: sid
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
			APT_UPDATED=0
		fi
		apt_update_once
		log "fetching criu ${CRIU_VERSION} source"
		(cd "$src" && apt-get source --download-only "criu=${CRIU_VERSION}-1" >/dev/null 2>&1) || true
		if [ ! -s "$tarball" ]; then
			echo "could not fetch $tarball from Debian's sid deb-src (is deb.debian.org reachable?)" >&2
			exit 1
		fi
	fi
	local epoch
	epoch=$(date +%s)
	local variant dir
	for variant in full lean; do
		dir=$src/$variant
		log "building criu ${CRIU_VERSION} ($variant)"
		rm -rf "$dir"
		mkdir -p "$dir"
		tar -C "$dir" -xf "$tarball"
		local extra=() wrap=
		if [ "$variant" = lean ]; then
			extra=(NO_GNUTLS=1)
			lean_static_libs "$dir/static-libs"
			# WRAPFLAGS reaches only the final links (criu/Makefile);
			# LDFLAGS would reach CRIU's parasite blobs too.
			wrap="-L$dir/static-libs -no-pie"
		fi
		SOURCE_DATE_EPOCH=$epoch WRAPFLAGS=$wrap make -C "$dir/criu-${CRIU_VERSION}" -j"$(nproc)" "${extra[@]}" criu \
			>"$src/criu-build-$variant.log" 2>&1 || {
			tail -30 "$src/criu-build-$variant.log" >&2
			echo "criu build failed; full log: $src/criu-build-$variant.log" >&2
			exit 1
		}
	done
	install -m 0755 "$src/full/criu-${CRIU_VERSION}/criu/criu" /usr/local/sbin/criu
	install -D -m 0755 "$src/lean/criu-${CRIU_VERSION}/criu/criu" "$CRIU_LEAN"
	if ldd "$CRIU_LEAN" | grep -qE 'gnutls|protobuf-c|libnl-3' || ! ldd "$CRIU_LEAN" | grep -q nftables; then
		echo "$CRIU_LEAN: expected a CRIU without GnuTLS, with libnftables, its small libraries linked in: $(ldd "$CRIU_LEAN" | tr '\n' ' ')" >&2
		exit 1
	fi
	criu_pair_stamp >"$CRIU_PAIR"
	# The full tree stays (CRIU's source, to read when its log says why).
	rm -rf "$src/lean"
	hash -r
	log "installed $(criu --version | head -1) at /usr/local/sbin/criu and, without GnuTLS, at $CRIU_LEAN"
}

# A private Python environment for the test suite (pytest) and virtme-ng.
install_venv() {
	if [ ! -x "$PREFIX/venv/bin/python" ]; then
		log "creating $PREFIX/venv"
		python3 -m venv "$PREFIX/venv"
	fi
	if ! "$PREFIX/venv/bin/python" -c 'import pytest' 2>/dev/null; then
		log "installing pytest into $PREFIX/venv"
		"$PREFIX/venv/bin/pip" install -q pytest
	fi
	# hack/bench_migrate.py plots docs/migration-downtime.png.
	if ! "$PREFIX/venv/bin/python" -c 'import matplotlib' 2>/dev/null; then
		log "installing matplotlib into $PREFIX/venv (benchmark plots)"
		"$PREFIX/venv/bin/pip" install -q matplotlib || log "matplotlib failed to install: benchmark plots will be missing"
	fi
}

install_vm_tooling() {
	[ "${SKIP_VM_TOOLING:-0}" = 1 ] && return
	apt_install qemu-system-x86 linux-image-amd64
	if [ ! -x "$PREFIX/venv/bin/vng" ]; then
		log "installing virtme-ng from PyPI into $PREFIX/venv"
		"$PREFIX/venv/bin/pip" install -q virtme-ng
	fi
	ln -sf "$PREFIX/venv/bin/vng" /usr/local/bin/vng
}

# A busybox root filesystem (the test image), built from busybox-static.
install_rootfs() {
	local rootfs=$PREFIX/rootfs/busybox
	if [ -x "$rootfs/bin/busybox" ] && [ -e "$rootfs/bin/sh" ]; then
		return
	fi
	log "building busybox rootfs at $rootfs"
	rm -rf "$rootfs"
	mkdir -p "$rootfs"/{bin,sbin,dev,proc,sys,tmp,etc,root,var,run,usr/bin,usr/sbin}
	# busybox-static's binary: the rootfs has no libc. (Debian's dynamic
	# `busybox` package conflicts with busybox-static; never install it.)
	if ! file -L /bin/busybox | grep -q 'statically linked'; then
		echo "/bin/busybox is not statically linked: install busybox-static" >&2
		exit 1
	fi
	cp /bin/busybox "$rootfs/bin/busybox"
	local applet
	for applet in $("$rootfs/bin/busybox" --list); do
		[ -e "$rootfs/bin/$applet" ] || ln -s busybox "$rootfs/bin/$applet"
	done
	echo 'root:x:0:0:root:/root:/bin/sh' >"$rootfs/etc/passwd"
	echo 'nobody:x:65534:65534:nobody:/:/bin/sh' >>"$rootfs/etc/passwd"
	echo 'root:x:0:' >"$rootfs/etc/group"
	echo 'nogroup:x:65534:' >>"$rootfs/etc/group"
	chmod 1777 "$rootfs/tmp"
}

build_runtime() {
	[ "${SKIP_BUILD:-0}" = 1 ] && return
	if [ "${CNTRLIVE_DYNAMIC:-0}" = 1 ]; then
		# RUSTFLAGS, when set (even empty), replaces .cargo/config.toml's
		# target rustflags (crt-static, relocation-model=static): a
		# dynamically linked binary, at the same path, for a host whose
		# glibc differs from the build host's (docs/compatibility.md).
		log "cargo build --release (dynamically linked: CNTRLIVE_DYNAMIC=1)"
		(cd "$TOP" && RUSTFLAGS="" cargo build --release --quiet)
		return
	fi
	log "cargo build --release"
	(cd "$TOP" && cargo build --release --quiet)
}

sysctls() {
	# CRIU's lazy page server sizes its pipe above the 1 MiB default.
	local cur
	cur=$(cat /proc/sys/fs/pipe-max-size)
	if [ "$cur" -lt 8388608 ]; then
		echo 8388608 >/proc/sys/fs/pipe-max-size || true
	fi
}

main() {
	need_root
	install_packages
	install_criu
	install_rootfs
	install_venv
	install_vm_tooling
	sysctls
	build_runtime
	log "done"
}

main "$@"
