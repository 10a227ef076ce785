#!/usr/bin/env bash
# Install what bp-monitor needs from the operating system, only where it is missing:
# Python 3.11 with venv, Java 17+ (Kafka 4, Elasticsearch 8, Spark 3.5) and Maven
# (fetches Kafka and Elasticsearch from Maven Central), OpenSSL (the local stack's
# certificates), headless Chromium with its driver
# (the report's browser test). Debian/Ubuntu via apt-get.
set -euo pipefail

missing=()

python_ok() { python3 -c 'import sys, venv, ensurepip; sys.exit(sys.version_info[:2] != (3, 11))' 2>/dev/null; }
java_ok() {
  command -v javac >/dev/null || return 1
  local v
  v=$(java -version 2>&1 | sed -n 's/.*version "\([0-9]*\).*/\1/p' | head -1)
  [[ -n "$v" && "$v" -ge 17 ]]
}

python_ok || missing+=(python3.11 python3.11-venv)
java_ok || missing+=(openjdk-17-jdk-headless)
command -v mvn >/dev/null || missing+=(maven)
command -v setpriv >/dev/null || missing+=(util-linux)
# The local stack's private CA and server certificates.
command -v openssl >/dev/null || missing+=(openssl)
# Headless Chromium and its WebDriver: the test that opens the HTML report in a browser.
command -v chromium >/dev/null || missing+=(chromium)
command -v chromedriver >/dev/null || missing+=(chromium-driver)

if [[ ${#missing[@]} -eq 0 ]]; then
  exit 0
fi
echo "[deps] missing: ${missing[*]}"
if ! command -v apt-get >/dev/null; then
  echo "[deps] ERROR: no apt-get here; install ${missing[*]} with your package manager and run make again." >&2
  exit 1
fi
SUDO=""
if [[ $(id -u) -ne 0 ]]; then
  command -v sudo >/dev/null || { echo "[deps] ERROR: run as root or install sudo to add ${missing[*]}" >&2; exit 1; }
  SUDO="sudo"
fi
$SUDO apt-get update -q
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends "${missing[@]}"
