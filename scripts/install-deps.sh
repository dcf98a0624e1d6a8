#!/usr/bin/env bash
# Installs the system packages the workspace needs to build on a fresh Debian machine:
# librdkafka (built from source by rdkafka-sys with its own configure script) wants a C toolchain,
# pkg-config, zlib and OpenSSL headers; cmake builds aws-lc-sys (the Pub/Sub client's TLS).
# Brokers are installed by scripts/brokers.sh, not here. Idempotent.
set -euo pipefail

PACKAGES=(build-essential cmake pkg-config zlib1g-dev libssl-dev curl)

missing=()
for package in "${PACKAGES[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$package")
  fi
done
if [ ${#missing[@]} -eq 0 ]; then
  echo "install-deps: all build packages present"
  exit 0
fi
sudo_cmd=()
if [ "$(id -u)" -ne 0 ]; then sudo_cmd=(sudo); fi
echo "install-deps: installing ${missing[*]}"
"${sudo_cmd[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -q
"${sudo_cmd[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
