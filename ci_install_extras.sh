#!/usr/bin/env bash
# Optional tools for the web demo and its browser test (tests/test_app.py): gradio, Playwright
# (driving the system Chromium, so no `playwright install` download) and Debian's chromium;
# wandb for the logger_type: wandb test (tests/test_logging.py, offline mode).
# Every step is allowed to fail: it prints a warning and the tests that need the tool skip.
# Fast when everything is already installed.
set -u
cd "$(dirname "$0")"
PYTHON=${PYTHON:-python}

warn() { echo "ci_install_extras: warning: $*" >&2; }

# Python packages, each only when missing (or, for gradio, of another major version than the tested 6).
need=()
installed() {  # package metadata only: importing gradio takes seconds
    "$PYTHON" -c "from importlib.metadata import version; import sys; sys.exit(not version('$1').startswith('$2'))" \
        2>/dev/null
}
installed gradio 6. || need+=("gradio>=6,<7")
installed playwright "" || need+=("playwright>=1.51")
installed wandb "" || need+=("wandb")
if [ ${#need[@]} -gt 0 ]; then
    "$PYTHON" -m pip install -q "${need[@]}" || warn "pip install ${need[*]} failed; the tests that need them will skip"
fi

# Chromium from Debian/Ubuntu packages (root, or password-less sudo).
if ! command -v chromium >/dev/null 2>&1; then
    sudo=""
    if [ "$(id -u)" -ne 0 ]; then
        if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then sudo="sudo -n"; else sudo="none"; fi
    fi
    if [ "$sudo" = "none" ]; then
        warn "not root and no password-less sudo: cannot apt-get install chromium; the browser test will skip"
    elif ! command -v apt-get >/dev/null 2>&1; then
        warn "no apt-get: install chromium yourself; the browser test will skip"
    else
        { $sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq chromium; } \
            || warn "apt-get install chromium failed; the browser test will skip"
    fi
fi
exit 0
