#!/usr/bin/env bash
# Installs everything the project needs on a fresh Debian 12 machine (run as root):
# the Debian packages in scripts/apt-packages.txt and a virtualenv in .venv with the
# controller package, the OCR app and their dev tools. Safe to run again: it does only what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" -ne 0 ]; then
  echo "setup.sh: run as root (it installs Debian packages and the lab needs root)" >&2
  exit 2
fi

mapfile -t pkgs < <(grep -v '^\s*#' scripts/apt-packages.txt | grep -v '^\s*$')
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing Debian packages: ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
# torch 2.13.0 CPU build lies in /opt/wheels on our machines; a plain PyPI torch is a CUDA build.
find_links=()
[ -d /opt/wheels ] && find_links=(--find-links /opt/wheels)
stamp=.venv/.setup-stamp
want=$(cat pyproject.toml apps/ocr/pyproject.toml | sha256sum | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  echo "setup: installing Python packages into .venv"
  # This machine's pip.conf names local index dirs that may be absent; their warnings are noise.
  exec 3>&2 2> >(grep -v 'is ignored: it is neither a file nor a directory' >&3)
  .venv/bin/pip install -q "${find_links[@]}" --upgrade pip
  .venv/bin/pip install -q "${find_links[@]}" 'torch==2.13.0'
  .venv/bin/pip install -q "${find_links[@]}" -e '.[dev]' -e 'apps/ocr[dev]'
  echo "$want" > "$stamp"
  exec 2>&3 3>&-
fi
echo "setup: ready (.venv)"
