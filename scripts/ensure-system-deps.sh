#!/usr/bin/env bash
# Make sure the system packages zipmount needs are present: libfuse 3 (libfuse3-3, which mfusepy
# loads), fusermount3 (fuse3), and the zip/unzip tools of the tests. Extra Debian package names
# may be passed (e.g. nginx-light for `make bench`). As root, missing packages are installed with
# apt-get; otherwise the exact command is printed.
set -euo pipefail
missing=()
ldconfig -p 2>/dev/null | grep -q 'libfuse3\.so\.3' || missing+=(libfuse3-3)
command -v fusermount3 >/dev/null 2>&1 || missing+=(fuse3)
# zip and unzip make and check the unix-mode archives of tests/test_e2e_modes.py.
command -v zip >/dev/null 2>&1 || missing+=(zip)
command -v unzip >/dev/null 2>&1 || missing+=(unzip)
# systemd-analyze verifies systemd/zipmount@.service in the tests (systemd need not be running).
command -v systemd-analyze >/dev/null 2>&1 || missing+=(systemd)
for pkg in "$@"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "installing ${missing[*]} with apt-get" >&2
  DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
else
  echo "zipmount needs: ${missing[*]}. Install them with:" >&2
  echo "  sudo apt-get install -y ${missing[*]}" >&2
  exit 1
fi
