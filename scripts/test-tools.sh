#!/usr/bin/env bash
# Tools the UWS tests use that pip does not bring: STILTS (taplint, the IVOA's checker of
# TAP/UWS/VOSI services) from Debian. Also makes sure the Python packages those tests import
# are in the virtual environment. Idempotent: a second run installs nothing.
set -euo pipefail

VENV="${VENV:-.venv}"
PIP="$VENV/bin/pip"
PYTHON="$VENV/bin/python"

need_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
        echo "test-tools: cannot run '$*' without root" >&2; return 1; fi
}

if ! command -v stilts >/dev/null 2>&1; then
    echo "test-tools: installing stilts (Debian)"
    export DEBIAN_FRONTEND=noninteractive
    if ! need_root apt-get install -y --no-install-recommends stilts >/dev/null 2>&1; then
        need_root apt-get update >/dev/null
        need_root apt-get install -y --no-install-recommends stilts >/dev/null
    fi
fi

if [ -x "$PYTHON" ]; then
    missing=()
    for module_package in "swagger_ui_bundle:swagger-ui-bundle>=1.1" \
        "openapi_core:openapi-core>=0.19" "httpx:httpx>=0.27"; do
        module="${module_package%%:*}"
        package="${module_package#*:}"
        "$PYTHON" -c "import $module" 2>/dev/null || missing+=("$package")
    done
    if [ "${#missing[@]}" -gt 0 ]; then
        echo "test-tools: installing ${missing[*]}"
        "$PIP" install --quiet "${missing[@]}"
    fi
fi
