#!/usr/bin/env bash
# The main job on the local lab: set up this machine, start the six default lab hosts
# (inventory/lab.yml), provision the whole OCR platform on them, probe every service, and say
# where the platform is and where its admin credential and CA are.
# `.venv/bin/llmops-provision lab down` removes the lab.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cli=.venv/bin/llmops-provision
inventory=inventory/lab.yml
"$cli" lab up --inventory "$inventory"
"$cli" apply "$inventory"
"$cli" test "$inventory"
.venv/bin/python - "$inventory" <<'PY'
import sys

from llmops_provision import checks, deploy

target = deploy.load_target(sys.argv[1])
inv, secrets = target.inventory, deploy.secrets_dir(target.name)
url = deploy.platform_url(target)
mon = sorted(inv.hosts_of("monitoring"))[0]
prom = f"http://{checks.host_access(inv, mon).address}:{target.configs[mon]['monitoring']['port']}"
print(f"""
The platform is up: {url}/
  web app:     {url}/  (log in as admin; the password is in {secrets}/admin-password)
  CA to trust: {secrets}/tls-ca.crt
  OCR API:     curl --cacert {secrets}/tls-ca.crt -H "Authorization: Bearer $(cat {secrets}/api-token)" \\
                 -F file=@IMAGE.png {url}/v1/ocr
  Prometheus:  {prom}/consoles/llmops-overview.html
  Remove the lab: .venv/bin/llmops-provision lab down""")
PY
