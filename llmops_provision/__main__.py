from llmops_provision.cli import main

raise SystemExit(main())
