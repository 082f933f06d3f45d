#!/usr/bin/env bash
# Installs the host tools the fault-injection suite (test/faults) needs on a
# fresh Debian machine, and nothing when they are already there (safe to run on
# every CI run): iptables (partitions inside container network namespaces) and
# util-linux's nsenter. Docker itself is the machine's business: with CI set,
# the suite fails rather than skips when Docker is not running.
set -euo pipefail

SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO=sudo; fi

need=()
command -v iptables >/dev/null 2>&1 || need+=(iptables)
command -v nsenter >/dev/null 2>&1 || need+=(util-linux)
if [ ${#need[@]} -eq 0 ]; then
	echo "fault deps: iptables and nsenter already installed"
else
	export DEBIAN_FRONTEND=noninteractive
	if ! $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}"; then
		$SUDO apt-get update -qq
		$SUDO apt-get install -y -qq --no-install-recommends "${need[@]}"
	fi
	echo "fault deps: installed ${need[*]}"
fi
if ! docker version --format '{{.Server.Version}}' >/dev/null 2>&1; then
	echo "fault deps: WARNING: Docker is not running; test/faults will fail under CI=true" >&2
fi
