#!/usr/bin/env bash
# The seed's start script: provision one server type on this machine (root, systemd as PID 1).
#   ./start_server.sh [--config-dir DIR] [--app-dir DIR] SERVER_TYPE
# A thin shim over `llmops-provision start` (see README "CLI reference").
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
if [ "$#" -eq 0 ]; then
  echo "usage: $0 [--config-dir DIR] [--app-dir DIR] SERVER_TYPE (web, api, lb, db, monitoring)" >&2
  exit 2
fi
if [ -x "$here/.venv/bin/python" ]; then
  python="$here/.venv/bin/python"
else
  python="$(command -v python3)"
fi
export PYTHONPATH="$here${PYTHONPATH:+:$PYTHONPATH}"
exec "$python" -m llmops_provision start "$@"
