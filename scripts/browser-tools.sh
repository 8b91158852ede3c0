#!/usr/bin/env bash
# What the browser tests of the web pages need: Debian's Chromium (/usr/bin/chromium) and
# Playwright for Python in the virtual environment, which drives that Chromium (it never
# downloads a browser of its own). Also prometheus-client, which /metrics needs.
# Idempotent: a second run checks and installs nothing.
set -euo pipefail

VENV="${VENV:-.venv}"
PIP="$VENV/bin/pip"
PYTHON="$VENV/bin/python"

need_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
        echo "browser-tools: cannot run '$*' without root" >&2; return 1; fi
}

if [ ! -x /usr/bin/chromium ]; then
    echo "browser-tools: installing chromium (Debian)"
    export DEBIAN_FRONTEND=noninteractive
    if ! need_root apt-get install -y --no-install-recommends chromium >/dev/null 2>&1; then
        need_root apt-get update >/dev/null
        need_root apt-get install -y --no-install-recommends chromium >/dev/null
    fi
fi

if [ -x "$PYTHON" ]; then
    missing=()
    for module_package in "playwright:playwright>=1.40" \
        "prometheus_client:prometheus-client>=0.20"; do
        module="${module_package%%:*}"
        package="${module_package#*:}"
        "$PYTHON" -c "import $module" 2>/dev/null || missing+=("$package")
    done
    if [ "${#missing[@]}" -gt 0 ]; then
        echo "browser-tools: installing ${missing[*]}"
        "$PIP" install --quiet "${missing[@]}"
    fi
fi
