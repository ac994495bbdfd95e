#!/usr/bin/env bash
# One entry point for a fresh Debian/Ubuntu machine with Python 3.11:
#   ./vigil.sh serve   set up, train the default model if there is none, serve it on 127.0.0.1:8000
#   ./vigil.sh test    set up, then lint, type-check and run the whole test suite
#   ./vigil.sh train   set up, then (re)train the default model
# Settings: VENV (default .venv), BUNDLE (default models/default), PYTHON (default python3.11).
set -euo pipefail
cd "$(dirname "$0")"

VENV=${VENV:-.venv}
BUNDLE=${BUNDLE:-models/default}
PYTHON=${PYTHON:-$(command -v python3.11 || command -v python3)}
FMNIST=/usr/share/datasets/fashion-mnist
BIN="$VENV/bin"

say() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

apt_install() {
  local missing=()
  for pkg in "$@"; do dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg"); done
  [ ${#missing[@]} -eq 0 ] && return 0
  say "installing Debian packages: ${missing[*]}"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
}

system_deps() {
  local pkgs=()
  [ -d "$FMNIST" ] || pkgs+=(dataset-fashion-mnist)
  "$PYTHON" -c 'import ensurepip, venv' 2>/dev/null || pkgs+=(python3-venv)
  if [ "${1:-}" = test ]; then
    command -v promtool >/dev/null || pkgs+=(prometheus)
    # The container tests (tests/test_containers.py): rootful podman with runc (Debian's
    # crun fails on hybrid cgroups), netavark + aardvark-dns (compose service names),
    # iptables (published ports), catatonit (compose `init: true`), and debootstrap for
    # the stand-in base images (deploy/base-image.sh).
    pkgs+=(podman runc netavark aardvark-dns iptables catatonit debootstrap)
    command -v chromium >/dev/null || pkgs+=(chromium)  # tests/test_page_browser.py
  fi
  [ ${#pkgs[@]} -eq 0 ] || apt_install "${pkgs[@]}"
}

venv() {
  local stamp="$VENV/.installed"
  if [ ! -x "$BIN/python" ]; then
    say "creating $VENV with $PYTHON"
    "$PYTHON" -m venv "$VENV"
  fi
  if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
    say "installing vigil[train,cpu,dev,ray] into $VENV"
    # torch is pinned (==2.13.0); for the small CPU-only build set
    # PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu before running this.
    # ray: `vigil score --ray` and its tests (ray[data], with the batch extra's pyarrow).
    "$BIN/python" -m pip install -q -e ".[train,cpu,dev,ray]"
    touch "$stamp"
  fi
}

train_default() {
  say "training the default model (VAE, Fashion-MNIST class 0 = T-shirt/top) into $BUNDLE"
  "$BIN/vigil" train --data fashion-mnist --normal-class 0 --model vae --out "$BUNDLE"
}

case "${1:-}" in
  serve)
    system_deps; venv
    [ -f "$BUNDLE/manifest.json" ] || train_default
    say "serving $BUNDLE on http://127.0.0.1:8000 (docs: /docs)"
    exec "$BIN/vigil" serve --bundle "$BUNDLE" --host 127.0.0.1 --port 8000
    ;;
  train)
    system_deps; venv; train_default
    ;;
  test)
    system_deps test; venv
    say "ruff"; "$BIN/ruff" check . && "$BIN/ruff" format --check .
    say "mypy"; "$BIN/mypy"
    say "pytest"; VIGIL_REQUIRE_DEPLOY_TOOLS=1 "$BIN/pytest" "${@:2}"
    ;;
  *)
    echo "usage: $0 serve|test|train" >&2; exit 2
    ;;
esac
