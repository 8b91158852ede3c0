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

# Podman, for the tests of jobs in a container image, with a tiny image built from files (a
# static busybox): nothing is pulled from a registry. Then how podman runs on this machine is
# found out and written to $ENV_DIR/podman.env for the tests (a sandbox may forbid raising
# resource limits, which podman's default limits need, or crun's hybrid cgroups).
ENV_DIR="${JOBBRIDGE_TEST_ENV_DIR:-/var/tmp/jobbridge-test}"
PODMAN_IMAGE="localhost/jobbridge-test-busybox"

# (the image needs the static busybox: a root file system with no C library)
if ! command -v podman >/dev/null 2>&1 || ! command -v runc >/dev/null 2>&1 ||
    ! dpkg -s busybox-static catatonit >/dev/null 2>&1; then
    echo "test-tools: installing podman (Debian)"
    export DEBIAN_FRONTEND=noninteractive
    packages=(podman runc catatonit busybox-static)
    if ! need_root apt-get install -y --no-install-recommends "${packages[@]}" >/dev/null 2>&1; then
        need_root apt-get update >/dev/null
        need_root apt-get install -y --no-install-recommends "${packages[@]}" >/dev/null
    fi
fi

if ! podman image exists "$PODMAN_IMAGE" 2>/dev/null; then
    echo "test-tools: building the podman test image $PODMAN_IMAGE"
    root="$(mktemp -d)"
    mkdir -p "$root/bin" "$root/tmp"
    cp /bin/busybox "$root/bin/busybox"
    for tool in sh true false env pwd cat echo sleep ls printf; do ln -s busybox "$root/bin/$tool"; done
    tar -C "$root" -cf "$root.tar" .
    podman import --quiet "$root.tar" "$PODMAN_IMAGE" >/dev/null
    rm -rf "$root" "$root.tar"
fi

mkdir -p "$ENV_DIR"
limits=(--ulimit "nofile=$(ulimit -Sn):$(ulimit -Hn)" --ulimit "nproc=4096:4096")
found=""
for runtime in "" runc; do
    global=()
    [ -n "$runtime" ] && global=(--runtime "$runtime")
    for arguments in "" "${limits[*]}"; do
        # shellcheck disable=SC2086 # the limits are words on purpose
        if podman "${global[@]}" run --rm --pull=never $arguments "$PODMAN_IMAGE" /bin/true \
            >/dev/null 2>&1; then
            found="yes"
            break 2
        fi
    done
done
if [ -n "$found" ]; then
    {
        echo "JOBBRIDGE_TEST_PODMAN_IMAGE=$PODMAN_IMAGE"
        echo "JOBBRIDGE_TEST_PODMAN_COMMAND=podman ${global[*]}"
        echo "JOBBRIDGE_TEST_PODMAN_ARGUMENTS=$arguments"
    } >"$ENV_DIR/podman.env"
else
    rm -f "$ENV_DIR/podman.env"
    echo "test-tools: podman cannot run a container here:" >&2
    podman run --rm --pull=never "$PODMAN_IMAGE" /bin/true >&2 || true
fi
