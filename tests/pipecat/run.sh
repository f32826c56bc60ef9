#!/usr/bin/env bash
# Pipecat compatibility check: installs pipecat-ai (and websockets) from PyPI into a venv
# (reused between runs), builds switchboard's `first_messages` example and runs check.py
# against it twice: on the messages it prints, and on what a wss:// agent received from it
# over a verified TLS connection (wss_capture.py).
#   tests/pipecat/run.sh            (PIPECAT_VENV overrides the venv location)
set -euo pipefail
cd "$(dirname "$0")/../.."

venv="${PIPECAT_VENV:-/tmp/pipecat-venv}"
if [ ! -x "$venv/bin/python" ]; then
    python3 -m venv "$venv"
fi
if ! "$venv/bin/python" -c "import pipecat, websockets" >/dev/null 2>&1; then
    "$venv/bin/pip" install --quiet pipecat-ai websockets
fi
echo "pipecat-ai $("$venv/bin/python" -c 'import importlib.metadata as m; print(m.version("pipecat-ai"))')"

cargo build --quiet -p switchboard-media --example first_messages
example="${CARGO_TARGET_DIR:-target}/debug/examples/first_messages"
messages="$(mktemp)"
trap 'rm -f "$messages"' EXIT
from="+919800000001"
to="+918047168000"
"$example" --from "$from" --to "$to" >"$messages"
"$venv/bin/python" tests/pipecat/check.py "$messages" "$example" "$from" "$to"

echo "--- again, over wss:// ---"
"$venv/bin/python" tests/pipecat/wss_capture.py "$messages" "$example" "$from" "$to"
"$venv/bin/python" tests/pipecat/check.py "$messages" "$example" "$from" "$to"
