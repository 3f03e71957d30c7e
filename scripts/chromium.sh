#!/usr/bin/env bash
# Headless Chromium and its WebDriver from Debian's packages, for the browser tests of
# the web UI (tests/browser). Debian builds chromium-driver from the same source as
# chromium, so the two versions always match; no driver is downloaded at test time.
#
#   scripts/chromium.sh install     # apt-get install chromium chromium-driver if missing
#   scripts/chromium.sh paths       # "CHROMIUM CHROMEDRIVER" (exit 1 when either is missing)
set -euo pipefail

browser() { command -v chromium 2>/dev/null || command -v chromium-browser 2>/dev/null; }
driver() {
  command -v chromedriver 2>/dev/null || { [[ -x /usr/lib/chromium/chromedriver ]] && echo /usr/lib/chromium/chromedriver; }
}

install() {
  if browser >/dev/null && driver >/dev/null; then return 0; fi
  if [[ "$(id -u)" != 0 ]]; then
    echo "chromium.sh: Chromium is not installed (apt-get install chromium chromium-driver, as root)" >&2
    exit 1
  fi
  echo "[chromium] installing Debian's chromium and chromium-driver packages" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q >/dev/null && apt-get install -y -q --no-install-recommends chromium chromium-driver >/dev/null
  browser >/dev/null && driver >/dev/null
}

cmd="${1:-}"; shift || true
case "$cmd" in
  install) install ;;
  paths)
    b="$(browser)" || { echo "chromium.sh: no chromium" >&2; exit 1; }
    d="$(driver)" || { echo "chromium.sh: no chromedriver" >&2; exit 1; }
    echo "$b $d"
    ;;
  *) echo "usage: $0 install | paths" >&2; exit 2 ;;
esac
