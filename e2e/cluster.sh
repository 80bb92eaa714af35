#!/usr/bin/env bash
# The local e2e cluster's one command:  e2e/cluster.sh up|down|status|logs|env
#
# Runs the conspirator_e2e package with e2e/ on the module path.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
py="${PYTHON:-}"
if [[ -z "$py" ]]; then
  if [[ -x "$here/../.venv/bin/python" ]]; then py="$here/../.venv/bin/python"; else py=python3; fi
fi
export PYTHONPATH="$here${PYTHONPATH:+:$PYTHONPATH}"
exec "$py" -m conspirator_e2e "$@"
