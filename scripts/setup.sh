#!/usr/bin/env bash
# One-time set-up on a fresh machine (called by `make`): Debian packages when missing, then .venv with
# torch pinned first (any other torch spec pulls multi-GB CUDA wheels), then every package editable.
set -euo pipefail
cd "$(dirname "$0")/.."

SYSTEM_PACKAGES=(${DITLAB_SYSTEM_PACKAGES:-})
missing=()
for p in "${SYSTEM_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing Debian packages: ${missing[*]}"
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
PIP=(.venv/bin/python -m pip --disable-pip-version-check -q)
"${PIP[@]}" install -c constraints.txt torch==2.13.0
"${PIP[@]}" install -c constraints.txt \
  -e packages/core -e packages/medical -e packages/imaging -e packages/vision3d \
  -e packages/audio -e packages/molecules -e ".[all,dev]"
echo "setup: .venv ready"
