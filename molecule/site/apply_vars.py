"""Print, as JSON, the extra vars `llmops-provision apply INVENTORY` hands site.yml (validated
effective configs, the secrets dir, the inventory name), generating missing credentials the way
apply does. Values of secrets never leave their files.

    python molecule/site/apply_vars.py inventory/lab.yml
"""

from __future__ import annotations

import json
import sys

from llmops_provision import deploy
from llmops_provision.errors import InvalidInput


def main(path: str) -> int:
    try:
        target = deploy.load_target(path)
    except InvalidInput as e:
        for err in e.errors:
            print(err, file=sys.stderr)
        return 2
    deploy.ensure_secrets(target.name)
    print(
        json.dumps(
            {
                "llmops_effective_configs": target.configs,
                "llmops_secrets_dir": str(deploy.secrets_dir(target.name)),
                "llmops_inventory_name": target.name,
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
