#!/usr/bin/env bash
# System packages the test suite needs beyond Python: PostgreSQL (tracking-server tests) and Debian's
# Chromium + chromedriver (the MLflow UI browser test). Idempotent: installs only what is missing,
# runs `apt-get update` only when it installs, exits 0 when everything is already there.
# Runs as root (CI) or through sudo; prints what it installed.
set -euo pipefail

missing=()
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
command -v chromedriver >/dev/null 2>&1 || missing+=(chromium-driver)
# shellcheck disable=SC2012
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing+=(postgresql)

if [ "${#missing[@]}" -eq 0 ]; then
    exit 0
fi

if [ "$(id -u)" -eq 0 ]; then
    SUDO=()
elif command -v sudo >/dev/null 2>&1; then
    SUDO=(sudo)
else
    echo "install_system_deps: need root or sudo to install: ${missing[*]}" >&2
    exit 1
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "install_system_deps: no apt-get (not Debian/Ubuntu); install by hand: ${missing[*]}" >&2
    exit 1
fi

export DEBIAN_FRONTEND=noninteractive
"${SUDO[@]}" apt-get update -qq >/dev/null
"${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
echo "install_system_deps: installed ${missing[*]}"
