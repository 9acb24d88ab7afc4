#!/usr/bin/env bash
# A local multi-host moe-node cluster in network namespaces, to emulate mini-PCs on a switch.
#
#   sudo deploy/netns/cluster.sh up   [--nodes N] [--rate 5gbit] [--delay 0.1ms] [--model F] [--bin B]
#   sudo deploy/netns/cluster.sh run  [moe-node run arguments...]    # e.g. --prompt "Hello" -n 32
#   sudo deploy/netns/cluster.sh status
#   sudo deploy/netns/cluster.sh down
#
# Layout: one namespace "moe-sw" holds a bridge (the switch); namespaces moe-r (router) and
# moe-e1..moe-eN (expert nodes) each have a veth pair to it. Addresses are 10.77.0.1 (router)
# and 10.77.0.11.. (experts), /24, all inside the namespaces: nothing is routed to or from the
# host's own network. Every node's uplink is shaped on egress, in both directions of each
# link (node side and switch side):
#   - bandwidth: tc tbf at --rate (default 5gbit, a mini-PC's 5 GbE port);
#   - latency: tc netem --delay, only where the kernel has the netem qdisc (sch_netem). When
#     it is missing the script says so and shapes bandwidth only.
# MOE_NETNS_PREFIX (default moe) names the namespaces; MOE_NETNS_STATE the state directory.
# Expert nodes are started inside their namespaces with `--metrics-addr IP:9100` and log to
# the state directory (default /tmp/moe-netns); the router runs in moe-r with `run`.
set -euo pipefail

STATE=${MOE_NETNS_STATE:-/tmp/moe-netns}
PREFIX=${MOE_NETNS_PREFIX:-moe}
SUBNET=10.77.0
DATA_PORT=7000
METRICS_PORT=9100
SECRET_TEXT="netns-test-cluster-secret-$(date +%s)-$$"

usage() { sed -n '2,20p' "$0"; exit "${1:-0}"; }
die() { echo "cluster.sh: $*" >&2; exit 1; }

need_root() { [ "$(id -u)" = 0 ] || die "needs root (network namespaces)"; }

node_names() { local n=$1; echo r; for i in $(seq 1 "$n"); do echo "e$i"; done; }
node_ip() { if [ "$1" = r ]; then echo "$SUBNET.1"; else echo "$SUBNET.$((10 + ${1#e}))"; fi; }

# netem works only with the sch_netem module; probe it on a throwaway dummy device.
have_netem() {
    ip netns exec "$PREFIX-sw" ip link add moeprobe type dummy 2>/dev/null || return 1
    local ok=1
    ip netns exec "$PREFIX-sw" tc qdisc add dev moeprobe root netem delay 1ms 2>/dev/null && ok=0
    ip netns exec "$PREFIX-sw" ip link del moeprobe 2>/dev/null || true
    return $ok
}

# shape NS DEV: bandwidth (and latency where possible) on DEV's egress inside NS.
shape() {
    local ns=$1 dev=$2
    if [ -n "$DELAY" ] && [ "$NETEM" = yes ]; then
        ip netns exec "$ns" tc qdisc add dev "$dev" root handle 1: netem delay "$DELAY"
        ip netns exec "$ns" tc qdisc add dev "$dev" parent 1:1 handle 10: tbf rate "$RATE" burst "$BURST" latency 50ms
    else
        ip netns exec "$ns" tc qdisc add dev "$dev" root tbf rate "$RATE" burst "$BURST" latency 50ms
    fi
}

cmd_up() {
    NODES=3 RATE=5gbit DELAY="" MODEL="" BIN=""
    while [ $# -gt 0 ]; do
        case $1 in
            --nodes) NODES=$2; shift 2 ;;
            --rate) RATE=$2; shift 2 ;;
            --delay) DELAY=$2; shift 2 ;;
            --model) MODEL=$2; shift 2 ;;
            --bin) BIN=$2; shift 2 ;;
            -h|--help) usage ;;
            *) die "unknown option $1" ;;
        esac
    done
    [[ $NODES =~ ^[1-9][0-9]?$ ]] && [ "$NODES" -le 64 ] || die "--nodes must be 1..64"
    BIN=${BIN:-$(command -v moe-node || echo "$(cd "$(dirname "$0")/../.." && pwd)/target/release/moe-node")}
    [ -x "$BIN" ] || die "no moe-node binary at $BIN (cargo build --release -p moe-node, or --bin)"
    ip netns list | grep -q "^$PREFIX-sw\b" && die "already up (cluster.sh down first)"
    # tbf needs a burst of at least rate/HZ; 1 ms of traffic at the chosen rate is plenty.
    local rate_upper=${RATE%bit}; BURST=$(( $(numfmt --from=si "${rate_upper^^}") / 8 / 1000 + 16384 ))
    mkdir -p "$STATE"
    if [ -z "$MODEL" ]; then
        MODEL=$STATE/model.gguf
        [ -s "$MODEL" ] || "$BIN" synth --out "$MODEL" --preset tiny --seed 0
    fi
    printf '%s\n' "$SECRET_TEXT" > "$STATE/secret"
    chmod 600 "$STATE/secret"

    ip netns add "$PREFIX-sw"
    ip netns exec "$PREFIX-sw" ip link set lo up
    ip netns exec "$PREFIX-sw" ip link add br0 type bridge
    ip netns exec "$PREFIX-sw" ip link set br0 up
    NETEM=no
    if [ -n "$DELAY" ]; then
        if have_netem; then NETEM=yes; else
            echo "cluster.sh: this kernel has no netem qdisc (sch_netem): shaping bandwidth only, no added latency" >&2
        fi
    fi
    for n in $(node_names "$NODES"); do
        local ns=$PREFIX-$n
        ip netns add "$ns"
        ip netns exec "$ns" ip link set lo up
        ip link add "v-$n" netns "$ns" type veth peer name "s-$n" netns "$PREFIX-sw"
        ip netns exec "$ns" ip addr add "$(node_ip "$n")/24" dev "v-$n"
        ip netns exec "$ns" ip link set "v-$n" up
        ip netns exec "$PREFIX-sw" ip link set "s-$n" master br0 up
        shape "$ns" "v-$n"
        shape "$PREFIX-sw" "s-$n"
    done

    # Placement: the experts of every MoE layer split evenly over the expert nodes.
    local experts=384 per=$(( (384 + NODES - 1) / NODES ))
    : > "$STATE/placement.toml"
    for i in $(seq 1 "$NODES"); do
        local lo=$(( (i - 1) * per )) hi=$(( i * per - 1 ))
        [ $hi -ge $experts ] && hi=$((experts - 1))
        printf '[[node]]\nname = "e%d"\naddr = "%s:%d"\nshards = "%d-%d"\n\n' "$i" "$(node_ip "e$i")" "$DATA_PORT" "$lo" "$hi" >> "$STATE/placement.toml"
    done
    for i in $(seq 1 "$NODES"); do
        local ip; ip=$(node_ip "e$i")
        ip netns exec "$PREFIX-e$i" "$BIN" --role expert --model "$MODEL" --placement "$STATE/placement.toml" --node "e$i" \
            --secret-file "$STATE/secret" --listen "$ip:$DATA_PORT" --metrics-addr "$ip:$METRICS_PORT" \
            > "$STATE/e$i.log" 2>&1 &
        echo $! > "$STATE/e$i.pid"
    done
    printf 'BIN=%q\nMODEL=%q\nNODES=%q\nRATE=%q\nDELAY=%q\nNETEM=%q\n' "$BIN" "$MODEL" "$NODES" "$RATE" "$DELAY" "$NETEM" > "$STATE/env"
    for i in $(seq 1 "$NODES"); do
        for _ in $(seq 1 300); do grep -q "^listening on" "$STATE/e$i.log" && break; sleep 0.1; done
        grep -q "^listening on" "$STATE/e$i.log" || die "expert e$i did not start; see $STATE/e$i.log"
    done
    echo "up: $NODES expert nodes behind a $RATE switch${DELAY:+ (latency ${DELAY}: netem $NETEM)}; state in $STATE"
    echo "metrics: $(for i in $(seq 1 "$NODES"); do printf '%s:%d ' "$(node_ip "e$i")" $METRICS_PORT; done)(from inside a namespace)"
    echo "next: $0 run --prompt \"Hello\" -n 32"
}

cmd_run() {
    [ -f "$STATE/env" ] || die "not up"
    # shellcheck disable=SC1091
    . "$STATE/env"
    exec ip netns exec "$PREFIX-r" "$BIN" run --model "$MODEL" --placement "$STATE/placement.toml" --secret-file "$STATE/secret" \
        --metrics-addr "$(node_ip r):$METRICS_PORT" "$@"
}

cmd_status() {
    ip netns list | grep "^$PREFIX-" || echo "no namespaces"
    for f in "$STATE"/e*.pid; do
        [ -f "$f" ] || continue
        local pid; pid=$(cat "$f")
        if kill -0 "$pid" 2>/dev/null; then echo "$(basename "$f" .pid): running (pid $pid)"; else echo "$(basename "$f" .pid): stopped"; fi
    done
    ip netns exec "$PREFIX-sw" tc qdisc show 2>/dev/null | grep -v noqueue || true
}

cmd_down() {
    for f in "$STATE"/e*.pid; do
        [ -f "$f" ] || continue
        kill "$(cat "$f")" 2>/dev/null || true
        rm -f "$f"
    done
    for ns in $(ip netns list | awk '{print $1}' | grep "^$PREFIX-" || true); do
        ip netns del "$ns"
    done
    rm -f "$STATE/env"
    echo "down"
}

case ${1:-} in
    up) shift; need_root; cmd_up "$@" ;;
    run) shift; need_root; cmd_run "$@" ;;
    status) need_root; cmd_status ;;
    down) need_root; cmd_down ;;
    -h|--help|help) usage ;;
    *) usage 1 ;;
esac
