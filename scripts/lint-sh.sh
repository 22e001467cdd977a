#!/usr/bin/env bash
# Lints the project's shell scripts with ShellCheck (following sourced files). Part of
# `npm run lint`; scripts/setup-test.sh installs shellcheck.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

if ! command -v shellcheck >/dev/null 2>&1; then
  echo "lint-sh: shellcheck is not installed (scripts/setup-test.sh installs it)" >&2
  exit 1
fi
# Every tracked *.sh file and the CI entry point; outside a git checkout, the same by name.
if git rev-parse --is-inside-work-tree >/dev/null 2>&1; then
  mapfile -t files < <(git ls-files '*.sh' .ci/run)
else
  mapfile -t files < <(find . -name node_modules -prune -o -name .cache -prune -o -name .git -prune -o \( -name '*.sh' -o -path ./.ci/run \) -type f -print)
fi
shellcheck -x "${files[@]}"
echo "lint-sh: ${#files[@]} scripts clean"
