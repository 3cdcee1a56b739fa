# Throwaway services for scripts/demo and scripts/bench: a ZooKeeper server
# and test providers on loopback, all under one temp dir, all stopped on
# exit or interrupt. Source after common.sh.
# shellcheck shell=bash

MU_RUN_DIR=""
MU_PIDS=()

mu_services_init() {
    MU_RUN_DIR=$(mktemp -d "${TMPDIR:-/tmp}/microutil.XXXXXX")
    trap mu_services_stop EXIT
    trap 'mu_services_stop; exit 130' INT TERM
}

mu_services_stop() {
    local p
    for p in "${MU_PIDS[@]}"; do kill "$p" 2>/dev/null; done
    for p in "${MU_PIDS[@]}"; do
        for _ in 1 2 3 4 5 6 7 8 9 10; do kill -0 "$p" 2>/dev/null || break; sleep 0.2; done
        kill -9 "$p" 2>/dev/null
    done
    MU_PIDS=()
    [ -n "$MU_RUN_DIR" ] && rm -rf "$MU_RUN_DIR"
    MU_RUN_DIR=""
}

mu_free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])' 2>/dev/null ||
        echo $((20000 + RANDOM % 20000))
}

mu_4lw() { # port word
    (exec 3<>"/dev/tcp/127.0.0.1/$1" && printf '%s' "$2" >&3 && timeout 2 cat <&3) 2>/dev/null
}

# Starts ZooKeeper; sets MU_ZK (host:port).
mu_zk_start() {
    local port dir
    port=$(mu_free_port)
    dir=$MU_RUN_DIR/zk
    mkdir -p "$dir/data"
    cat > "$dir/zoo.cfg" <<CFG
tickTime=200
minSessionTimeout=400
maxSessionTimeout=60000
initLimit=10
syncLimit=5
dataDir=$dir/data
clientPort=$port
clientPortAddress=127.0.0.1
admin.enableServer=false
4lw.commands.whitelist=*
CFG
    JMXDISABLE=true ZOO_LOG_DIR=$dir ZOO_LOG4J_PROP=WARN,CONSOLE \
        setsid /usr/share/zookeeper/bin/zkServer.sh start-foreground "$dir/zoo.cfg" \
        > "$dir/log" 2>&1 &
    MU_PIDS+=($!)
    local i
    for i in $(seq 1 200); do
        if mu_4lw "$port" srvr | grep -q 'Mode:'; then
            MU_ZK=127.0.0.1:$port
            return 0
        fi
        sleep 0.1
    done
    echo "ZooKeeper did not start; its log:" >&2
    tail -n 20 "$dir/log" >&2
    return 1
}

# mu_provider_start PROVIDER_BIN ARGS...: starts a test provider registered
# in $MU_ZK; sets MU_PORT and MU_PID (call it directly, not in $(...)).
mu_provider_start() {
    local bin=$1; shift
    local out
    out=$(mktemp "$MU_RUN_DIR/provider.XXXXXX")
    "$bin" --zk "$MU_ZK" "$@" > "$out" 2>>"$MU_RUN_DIR/providers.log" &
    MU_PID=$!
    MU_PIDS+=("$MU_PID")
    local i
    for i in $(seq 1 100); do
        if grep -q '^READY ' "$out"; then
            MU_PORT=$(sed -n 's/^READY //p' "$out")
            return 0
        fi
        sleep 0.05
    done
    echo "provider $* did not start" >&2
    return 1
}
