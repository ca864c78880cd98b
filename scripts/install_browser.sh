#!/usr/bin/env bash
# Debian's chromium for the browser end-to-end tests (Playwright's own browser download cannot work
# offline). Needs root or passwordless sudo; skipped when chromium is already there.
set -euo pipefail
[ -x /usr/bin/chromium ] && exit 0
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium >/dev/null
