#!/usr/bin/env bash
# Puts libtcmalloc_minimal.so.4 into <venv>/lib without root, where jaxtickets' CPU entry points find and preload it
# (jaxtickets/tcmalloc.py). Debian/Ubuntu only: apt-get download + dpkg-deb -x. With root, the system package
# (`sudo apt-get install libtcmalloc-minimal4`) does the same job for every venv.
#   scripts/install_tcmalloc.sh .venv
set -euo pipefail
venv="${1:-.venv}"
lib=libtcmalloc_minimal.so.4
if [ ! -d "$venv" ]; then
  echo "install_tcmalloc: no virtual environment at '$venv'; pass its directory, e.g. scripts/install_tcmalloc.sh .venv" >&2
  exit 1
fi
if [ -e "$venv/lib/$lib" ]; then
  echo "install_tcmalloc: $venv/lib/$lib is already there"
  exit 0
fi
if ldconfig -p 2>/dev/null | grep -q "$lib"; then
  echo "install_tcmalloc: the system has $lib already (found by ldconfig); nothing to do"
  exit 0
fi
if ! command -v apt-get >/dev/null || ! command -v dpkg-deb >/dev/null; then
  echo "install_tcmalloc: needs apt-get and dpkg-deb (Debian/Ubuntu); install gperftools' tcmalloc with your" \
       "package manager instead, or set JAXTICKETS_TCMALLOC=/path/to/$lib" >&2
  exit 1
fi
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
if ! (cd "$tmp" && apt-get download libtcmalloc-minimal4 >/dev/null 2>&1); then
  echo "install_tcmalloc: 'apt-get download libtcmalloc-minimal4' failed (no package index or no network?);" \
       "jaxtickets runs without tcmalloc, only slower on the CPU" >&2
  exit 1
fi
dpkg-deb -x "$tmp"/libtcmalloc-minimal4_*.deb "$tmp/root"
found="$(find "$tmp/root" -name "$lib" | head -n 1)"
if [ -z "$found" ]; then
  echo "install_tcmalloc: the downloaded package has no $lib" >&2
  exit 1
fi
# The .so.4 name is a symlink to the versioned file: copy the real file under the name the loader asks for.
cp -L "$found" "$venv/lib/$lib"
echo "install_tcmalloc: installed $venv/lib/$lib"
