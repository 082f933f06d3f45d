#!/usr/bin/env bash
# Installs what the kms tests need on a fresh Debian machine, and nothing
# when it is already there (safe to run on every CI run):
#   - SoftHSM2 (softhsm2-util, /usr/lib/softhsm/libsofthsm2.so) for the pkcs11 backend;
#   - the local-kms AWS KMS emulator, at a pinned version, for the aws backend.
# The Vault backend is tested against a stand-in server inside the tests.
set -euo pipefail

LOCAL_KMS_MODULE=github.com/nsmithuk/local-kms
LOCAL_KMS_VERSION=v0.0.0-20260228092603-2a5e92d09ab6

SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO=sudo; fi

# --- SoftHSM2 -------------------------------------------------------------
if [ -e /usr/lib/softhsm/libsofthsm2.so ] && command -v softhsm2-util >/dev/null 2>&1; then
	echo "kms deps: softhsm2 already installed"
else
	export DEBIAN_FRONTEND=noninteractive
	# apt-get update only when the package lists do not know softhsm2, or an
	# install from the lists we have fails (stale lists).
	if ! apt-cache show softhsm2 >/dev/null 2>&1; then
		$SUDO apt-get update -qq
	fi
	if ! $SUDO apt-get install -y -qq --no-install-recommends softhsm2; then
		$SUDO apt-get update -qq
		$SUDO apt-get install -y -qq --no-install-recommends softhsm2
	fi
	echo "kms deps: softhsm2 installed"
fi

# --- local-kms ------------------------------------------------------------
gobin="$(go env GOBIN)"
if [ -z "$gobin" ]; then gobin="$(go env GOPATH | cut -d: -f1)/bin"; fi
bin="$gobin/local-kms"
if [ -x "$bin" ] && go version -m "$bin" 2>/dev/null | grep -q "mod[[:space:]]*$LOCAL_KMS_MODULE[[:space:]]*$LOCAL_KMS_VERSION"; then
	echo "kms deps: local-kms $LOCAL_KMS_VERSION already installed at $bin"
else
	# Outside any module, with default flags, so the repository's go.mod and
	# GOFLAGS cannot interfere.
	(cd / && GOFLAGS= go install "$LOCAL_KMS_MODULE@$LOCAL_KMS_VERSION")
	echo "kms deps: local-kms $LOCAL_KMS_VERSION installed at $bin"
fi
