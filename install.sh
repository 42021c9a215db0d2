#!/bin/sh
# Install one version of gantry from a release location, checking its SHA-256.
#
#   install.sh --version X [--prefix DIR] [--from URL|DIR]
#
# The release location (--from, or $GANTRY_RELEASES) holds, for each version X,
#   gantry-X-x86_64-linux.tar.gz          the static binary, as dist/package.sh makes it
#   gantry-X-x86_64-linux.tar.gz.sha256   its checksum (sha256sum's format)
# and may be an http(s):// URL, a file:// URL or a directory.
#
# Each version goes to DIR/lib/gantry/versions/X/gantry (DIR: /usr/local by default), and
# DIR/bin/gantry is pointed at it. Installing a version already there, with the same checksum,
# changes nothing. A tarball whose checksum does not match is refused, and nothing is changed.
set -eu

version=""
prefix="/usr/local"
from="${GANTRY_RELEASES:-}"

die() {
	echo "install.sh: $*" >&2
	exit 1
}

while [ $# -gt 0 ]; do
	case "$1" in
	--version) [ $# -ge 2 ] || die "--version needs a value"; version="$2"; shift 2 ;;
	--version=*) version="${1#*=}"; shift ;;
	--prefix) [ $# -ge 2 ] || die "--prefix needs a value"; prefix="$2"; shift 2 ;;
	--prefix=*) prefix="${1#*=}"; shift ;;
	--from) [ $# -ge 2 ] || die "--from needs a value"; from="$2"; shift 2 ;;
	--from=*) from="${1#*=}"; shift ;;
	-h | --help)
		sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//'
		exit 0
		;;
	*) die "unknown argument '$1' (see --help)" ;;
	esac
done

[ -n "$version" ] || die "--version is required (for example --version 0.2.0)"
case "$version" in
*/* | *..* | "") die "--version '$version' is not a version" ;;
esac
[ -n "$from" ] || die "no release location: pass --from URL|DIR, or set GANTRY_RELEASES"
command -v sha256sum >/dev/null 2>&1 || die "sha256sum is required"
command -v tar >/dev/null 2>&1 || die "tar is required"

arch="$(uname -m)"
[ "$arch" = "x86_64" ] || die "no build for $arch: releases are made for x86_64 Linux"
name="gantry-$version-x86_64-linux.tar.gz"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT INT TERM

fetch() { # file
	case "$from" in
	http://* | https://*)
		command -v curl >/dev/null 2>&1 || die "curl is required to download from $from"
		curl -fsSL "${from%/}/$1" -o "$work/$1" || die "cannot download ${from%/}/$1"
		;;
	file://*) cp "${from#file://}/$1" "$work/$1" 2>/dev/null || die "no $1 in $from" ;;
	*) cp "$from/$1" "$work/$1" 2>/dev/null || die "no $1 in $from" ;;
	esac
}

fetch "$name"
fetch "$name.sha256"
expected="$(awk 'NR == 1 { print $1 }' "$work/$name.sha256")"
actual="$(sha256sum "$work/$name" | awk '{ print $1 }')"
[ -n "$expected" ] || die "$name.sha256 holds no checksum"
if [ "$expected" != "$actual" ]; then
	die "checksum mismatch for $name: expected $expected, got $actual; nothing was installed"
fi

dest="$prefix/lib/gantry/versions/$version"
bin="$prefix/bin/gantry"
if [ -x "$dest/gantry" ] && [ "$(cat "$dest/gantry.sha256" 2>/dev/null)" = "$actual" ]; then
	echo "gantry $version is already installed in $dest (sha256 $actual)"
else
	tar -xzf "$work/$name" -C "$work"
	found="$(find "$work" -type f -name gantry | head -n 1)"
	[ -n "$found" ] || die "$name holds no gantry binary"
	mkdir -p "$dest"
	# Atomic: the binary is moved into place whole.
	cp "$found" "$dest/gantry.new"
	chmod 0755 "$dest/gantry.new"
	mv -f "$dest/gantry.new" "$dest/gantry"
	echo "$actual" >"$dest/gantry.sha256"
	echo "installed gantry $version in $dest (sha256 $actual, verified)"
fi
mkdir -p "$prefix/bin"
ln -sfn "$dest/gantry" "$bin.new"
mv -f "$bin.new" "$bin"
echo "$bin -> $dest/gantry"
"$bin" version || die "the installed binary does not run"
