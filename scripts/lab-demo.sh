#!/usr/bin/env bash
# The main job on the local lab: set up this machine, start the six default lab hosts
# (inventory/lab.yml), provision the whole OCR platform on them, and probe every service.
# Afterwards: https://10.213.0.10/ (the lab CA is .llmops/secrets/lab/tls-ca.crt);
# `.venv/bin/llmops-provision lab down` removes the lab.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cli=.venv/bin/llmops-provision
"$cli" lab up --inventory inventory/lab.yml
"$cli" apply inventory/lab.yml
"$cli" test inventory/lab.yml
