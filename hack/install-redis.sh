#!/usr/bin/env bash
# Installs Debian's redis-server and redis-tools for the Redis tests if
# they are missing (needs root). The tests start and stop their own
# instances; installing does not start a service here.
set -euo pipefail
command -v redis-server >/dev/null && command -v redis-cli >/dev/null && exit 0
if [ "$(id -u)" != 0 ]; then
	echo "install-redis: redis-server is missing; install Debian's redis-server and redis-tools (as root: apt-get install redis-server redis-tools)" >&2
	exit 1
fi
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends redis-server redis-tools >/dev/null
# A package's service must not hold the default port: the tests run their own.
service redis-server stop >/dev/null 2>&1 || true
