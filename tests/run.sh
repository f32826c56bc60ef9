#!/usr/bin/env bash
# The whole test suite, as README's quick start runs it:
#   tests/run.sh
# Installs what the suite talks to (SIPp, PostgreSQL, Kamailio for the scale-out test, promtool
# from Debian's prometheus for the alert rules, iproute2 for the packet-loss run, openssl,
# Python venvs for SIPVicious, the SRTP caller and wss agent, Twilio's helper library, and the
# Pipecat check) when missing, starts a throwaway PostgreSQL on loopback, runs every Rust test in
# the workspace, then the Pipecat compatibility check. Nothing here is mocked.
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
command -v sipp >/dev/null 2>&1 || missing+=(sip-tester)
compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null || missing+=(postgresql)
command -v tc >/dev/null 2>&1 || missing+=(iproute2)
command -v nft >/dev/null 2>&1 || missing+=(nftables)
# openssl CLI: tests/pg.sh and the SIP TLS tests make throwaway CAs and certificates with it.
command -v openssl >/dev/null 2>&1 || missing+=(openssl)
command -v kamailio >/dev/null 2>&1 || missing+=(kamailio)
command -v promtool >/dev/null 2>&1 || missing+=(prometheus)
python3 -m venv --help >/dev/null 2>&1 || missing+=(python3-venv)
if [ ${#missing[@]} -gt 0 ]; then
    if [ "$(id -u)" = 0 ]; then
        echo "installing: ${missing[*]}"
        [ -n "${SWITCHBOARD_APT_UPDATED:-}" ] || apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
    else
        echo "missing packages (install them as root): ${missing[*]}" >&2
    fi
fi

# SIPVicious (PyPI) plays the attacker in the hostile-network tests; a venv keeps it off the
# system Python. Reused between runs.
sipvicious_venv="${SIPVICIOUS_VENV:-/tmp/sipvicious-venv}"
if [ ! -x "$sipvicious_venv/bin/sipvicious_svmap" ]; then
    python3 -m venv "$sipvicious_venv"
    "$sipvicious_venv/bin/pip" install --quiet sipvicious
fi
export PATH="$sipvicious_venv/bin:$PATH"

# The SRTP end-to-end tests: a caller speaking SRTP through libsrtp (pylibsrtp) and a wss://
# agent (websockets) whose test CA is made with the openssl CLI. Reused between runs.
srtp_venv="${SRTP_VENV:-/tmp/srtp-venv}"
if ! "$srtp_venv/bin/python" -c "import pylibsrtp, websockets" >/dev/null 2>&1; then
    python3 -m venv "$srtp_venv"
    "$srtp_venv/bin/pip" install --quiet pylibsrtp websockets
fi
export SRTP_VENV="$srtp_venv"

# The transfer end-to-end test issues the agent's call update with Twilio's own Python helper
# library (twilio), pointed at switchboard's admin address. Reused between runs.
twilio_venv="${TWILIO_VENV:-/tmp/twilio-venv}"
if ! "$twilio_venv/bin/python" -c "import twilio" >/dev/null 2>&1; then
    python3 -m venv "$twilio_venv"
    "$twilio_venv/bin/pip" install --quiet twilio
fi
export TWILIO_VENV="$twilio_venv"

eval "$(tests/pg.sh start)"
trap 'tests/pg.sh stop >/dev/null 2>&1 || true' EXIT

cargo test --workspace --locked

if [ -x tests/pipecat/run.sh ]; then
    tests/pipecat/run.sh
fi
