#!/usr/bin/env bash
# Packet loss on loopback inside a private network namespace, for the SIP suite's lossy run.
#
#   tests/netem.sh check              exit 0 if this machine can do it (root, iproute2, loss)
#   tests/netem.sh up   NS [PERCENT]  create namespace NS (lo up) dropping PERCENT % (default 10)
#   tests/netem.sh down NS            delete it
#   tests/netem.sh exec NS CMD...     run CMD inside NS
#
# Only the namespace's own loopback is affected; the host network is never touched. Loss is
# applied with `tc qdisc add dev lo root netem loss P%` where the kernel has sch_netem; kernels
# built without it (some VM/CI kernels) get the same effect from an nftables rule dropping P %
# of packets at the input hook (`numgen random mod 100 < P`). Either way each UDP packet (SIP and
# RTP) crossing loopback is lost independently with probability P and the sender sees no error.
# `up` prints which mechanism it used ("netem" or "nft").
set -euo pipefail

die() { echo "netem.sh: $*" >&2; exit 1; }

need_tools() {
    [ "$(id -u)" = 0 ] || die "must run as root (network namespaces)"
    command -v ip >/dev/null 2>&1 || die "ip (iproute2) not found"
}

apply_loss() {
    local ns=$1 percent=$2
    # UDP only (SIP and RTP): the admin API and agent WebSockets are TCP control plane, not the
    # path under test, and a lost SYN would only turn the run into a test of TCP's 1 s RTO.
    if command -v tc >/dev/null 2>&1 &&
        ip netns exec "$ns" tc qdisc add dev lo root handle 1: prio 2>/dev/null &&
        ip netns exec "$ns" tc qdisc add dev lo parent 1:3 handle 30: netem loss "${percent}%" 2>/dev/null &&
        ip netns exec "$ns" tc filter add dev lo parent 1:0 protocol ip u32 match ip protocol 17 0xff flowid 1:3 2>/dev/null; then
        echo netem
        return 0
    fi
    ip netns exec "$ns" tc qdisc del dev lo root 2>/dev/null || true
    if command -v nft >/dev/null 2>&1 &&
        printf 'table inet sbloss {\n chain input {\n  type filter hook input priority 0; policy accept;\n  meta l4proto udp numgen random mod 100 < %d drop\n }\n}\n' "$percent" |
        ip netns exec "$ns" nft -f - 2>/dev/null; then
        echo nft
        return 0
    fi
    return 1
}

cmd=${1:-}
case "$cmd" in
check)
    need_tools
    probe="sbprobe$$"
    ip netns add "$probe" || die "cannot create a network namespace"
    trap 'ip netns del "$probe" 2>/dev/null || true' EXIT
    ip netns exec "$probe" ip link set lo up
    apply_loss "$probe" 10 >/dev/null || die "neither tc netem nor nft can drop packets here"
    ;;
up)
    ns=${2:?namespace name}
    percent=${3:-10}
    [[ "$percent" =~ ^[0-9]+$ ]] && [ "$percent" -le 100 ] || die "loss must be 0..100"
    need_tools
    ip netns add "$ns"
    ip netns exec "$ns" ip link set lo up
    if ! apply_loss "$ns" "$percent"; then
        ip netns del "$ns" || true
        die "neither tc netem nor nft can drop packets here"
    fi
    ;;
down)
    ns=${2:?namespace name}
    ip netns del "$ns"
    ;;
exec)
    ns=${2:?namespace name}
    shift 2
    exec ip netns exec "$ns" "$@"
    ;;
*)
    sed -n '2,15p' "$0" >&2
    exit 2
    ;;
esac
