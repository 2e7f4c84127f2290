# Sourced by the bench scripts: start_hoard_server HOARD DIR starts
# `hoard serve` on a fresh datastore DIR/ds (state in DIR/state, log in
# DIR/log) on a loopback port, stops it when the script exits, and
# exports HOARD_SERVER, HOARD_FINGERPRINT and HOARD_TOKEN (an admin
# token) for the client commands that follow.
start_hoard_server() {
    local hoard=$1 dir=$2
    mkdir -p "$dir"
    HOARD_TOKEN=$("$hoard" token create bench --role admin --state-dir "$dir/state")
    "$hoard" serve --listen 127.0.0.1:0 --datastore "$dir/ds" --state-dir "$dir/state" \
        >"$dir/log" 2>&1 &
    hoard_server_pid=$!
    trap 'kill $hoard_server_pid 2>/dev/null || true' EXIT
    for _ in $(seq 100); do grep -q serving "$dir/log" && break; sleep 0.1; done
    HOARD_SERVER=$(grep serving "$dir/log" | awk '{print $NF}')
    HOARD_FINGERPRINT=$(grep -i fingerprint "$dir/log" | head -1 | awk '{print $NF}')
    export HOARD_SERVER HOARD_FINGERPRINT HOARD_TOKEN
}
