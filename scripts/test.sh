#!/usr/bin/env bash
# The whole test suite: setup, linters, unit tests, the OCR app's tests, and the lab tests
# (integration + molecule + e2e). Exit non-zero on any failure, including "no tests ran".
set -euo pipefail
cd "$(dirname "$0")/.."
start=$(date +%s)
scripts/setup.sh
export PATH="$PWD/.venv/bin:$PATH"

step() { echo; echo "=== $* ($(( $(date +%s) - start ))s)"; }

# pytest exits 5 when it collected nothing: that is a failure here, never a silent pass.
run_pytest() {
  local rc=0
  pytest "$@" || rc=$?
  if [ "$rc" -eq 5 ]; then echo "pytest collected no tests for: $*" >&2; exit 1; fi
  [ "$rc" -eq 0 ] || exit "$rc"
}

step "ruff"
ruff check llmops_provision tests apps/ocr bench
ruff format --check llmops_provision tests apps/ocr bench
step "mypy"
mypy llmops_provision
if compgen -G "roles/*/tasks/main.yml" >/dev/null; then
  step "ansible-lint"
  ansible-lint --profile production --offline roles playbooks site.yml
fi

step "unit tests"
run_pytest -q tests/unit
step "OCR app tests"
run_pytest -q apps/ocr/tests
step "lab, integration and molecule tests"
run_pytest -q --durations=25 tests/integration
if compgen -G "tests/e2e/test_*.py" >/dev/null; then
  step "end-to-end tests"
  run_pytest -q tests/e2e
fi
step "all tests passed in $(( $(date +%s) - start ))s"
