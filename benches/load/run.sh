#!/usr/bin/env bash
# benches/load/run.sh — side-by-side SIP load harness, switchboard vs Kamailio, on loopback.
#
#   benches/load/run.sh                 full bench: scenarios a b c, default rates, 5 rounds
#   benches/load/run.sh --quick         3 rounds, 5 s per run
#   benches/load/run.sh --mode rss      switchboard RSS under 3,000 rejects/s for 60 s
#   benches/load/run.sh --mode mem      memory per live call (1,000 held calls, both servers)
#   benches/load/run.sh --report        only redo target/load/results.md and the plot
#   benches/load/run.sh --help          every option (passed on to loadbench.py)
#
# Needs: sipp (Debian sip-tester), kamailio, python3 with venv, and the release binary
# (cargo build --release -p switchboard). It installs nothing but a Python venv at
# target/load/venv (matplotlib, websockets from PyPI), and says so before it does.
# Output: target/load/results.md, target/load/cpu_per_call.png, target/load/*.json.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
OUT="${LOAD_OUT:-$ROOT/target/load}"
VENV="$OUT/venv"
WORK="$OUT/work"

args=()
report_only=0
help=0
for a in "$@"; do
	case "$a" in
	--quick) args+=(--runs 3 --duration 5) ;;
	--report) report_only=1 ;;
	-h | --help) help=1 ;;
	*) args+=("$a") ;;
	esac
done

missing=()
command -v sipp >/dev/null || missing+=("sipp (apt-get install sip-tester)")
command -v kamailio >/dev/null || missing+=("kamailio (apt-get install kamailio)")
command -v python3 >/dev/null || missing+=("python3 (apt-get install python3 python3-venv)")
if ((${#missing[@]})); then
	echo "run.sh: missing tools:" >&2
	printf '  %s\n' "${missing[@]}" >&2
	echo "install them, e.g.: sudo apt-get install -y sip-tester kamailio python3-venv" >&2
	exit 2
fi
if [[ ! -x "$ROOT/target/release/switchboard" ]]; then
	echo "run.sh: $ROOT/target/release/switchboard not found; build it first:" >&2
	echo "  cargo build --release -p switchboard" >&2
	exit 2
fi

mkdir -p "$OUT"
if [[ ! -x "$VENV/bin/python" ]] || ! "$VENV/bin/python" -c 'import matplotlib, websockets' 2>/dev/null; then
	echo "run.sh: creating $VENV with matplotlib and websockets (pip, from PyPI)" >&2
	python3 -m venv "$VENV"
	"$VENV/bin/pip" install -q --disable-pip-version-check matplotlib websockets
fi
PY="$VENV/bin/python"

if ((help)); then
	sed -n '2,14p' "$0"
	echo
	exec "$PY" "$HERE/loadbench.py" --help
fi
if ((report_only)); then
	exec "$PY" "$HERE/report.py" "$OUT"
fi

# One run at a time per output directory: the work dir is wiped at start and the trap below
# ends the processes listed in it.
exec 9>"$OUT/.lock"
if ! flock -n 9; then
	echo "run.sh: another load run is using $OUT (set LOAD_OUT to use another directory)" >&2
	exit 3
fi

# Backstop for loadbench.py's own cleanup: every process it started is in $WORK/pids/<pid>;
# end exactly those (kamailio's main process takes its children with it).
cleanup() {
	local f pid
	if [[ -d "$WORK/pids" ]]; then
		for f in "$WORK/pids"/*; do
			[[ -e "$f" ]] || continue
			pid="$(basename "$f")"
			kill "$pid" 2>/dev/null || true
		done
		sleep 1
		for f in "$WORK/pids"/*; do
			[[ -e "$f" ]] || continue
			pid="$(basename "$f")"
			kill -9 "$pid" 2>/dev/null || true
			rm -f "$f"
		done
	fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# SIPp and switchboard hold a socket per call; raise the soft limit as far as allowed.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

"$PY" "$HERE/loadbench.py" --python "$PY" --out "$OUT" ${args[@]+"${args[@]}"}
"$PY" "$HERE/report.py" "$OUT"
