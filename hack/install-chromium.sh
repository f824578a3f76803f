#!/usr/bin/env bash
# Installs Debian's Chromium for the browser tests if it is missing (needs
# root). No browser is downloaded by any other means.
set -euo pipefail
command -v chromium >/dev/null && exit 0
if [ "$(id -u)" != 0 ]; then
	echo "install-chromium: Chromium is missing; install Debian's chromium package (as root: apt-get install chromium)" >&2
	exit 1
fi
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
