# Sourced by the scripts: where caches live (outside the clone, so CI runs are
# incremental) and the build's fixed timestamp.
export CVM_CACHE="${CVM_CACHE:-$HOME/.cache/cvm}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$CVM_CACHE/target}"
export SOURCE_DATE_EPOCH="${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct 2>/dev/null || echo 0)}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
CVM="$CARGO_TARGET_DIR/release/cvm"
