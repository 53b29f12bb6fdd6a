# Sourced by the scripts: where caches live (outside the clone, so CI runs are
# incremental) and the build's fixed timestamp.
export CVM_CACHE="${CVM_CACHE:-$HOME/.cache/cvm}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$CVM_CACHE/target}"
# The image's timestamps (initramfs entries, FAT, VHD footer, the UKI's signing time)
# are the last commit's time, CVM_IMAGE_EPOCH, which the scripts give `cvm build` as its
# SOURCE_DATE_EPOCH. Cargo sees a constant one: the `cc` crate reruns a build script
# whenever SOURCE_DATE_EPOCH changes (the C compiler reads it for __DATE__), so the
# commit's time would rebuild ring, zstd-sys and what depends on them after every
# commit although nothing they build records it.
export CVM_IMAGE_EPOCH="${CVM_IMAGE_EPOCH:-${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct 2>/dev/null || echo 0)}}"
export SOURCE_DATE_EPOCH=315532800 # 1980-01-01, the earliest time a zip entry can carry
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
# Binaries must not record where this machine keeps its crates or build folder (panic
# locations in dependencies and in code generated into OUT_DIR, such as cranelift's ISLE
# rules, are absolute paths). Both prefixes are constant per machine, so the flags — and
# cargo's fingerprints — do not change between checkouts; workspace crates are compiled
# from relative paths already. ./scripts/check-reproducible proves the result.
_cvm_cargo_home="${CARGO_HOME:-$HOME/.cargo}"
case "$_cvm_cargo_home$CARGO_TARGET_DIR" in
  *" "*) echo "env.sh: CARGO_HOME and CARGO_TARGET_DIR must not contain spaces (they go into RUSTFLAGS)" >&2; return 1 2>/dev/null || exit 1 ;;
esac
case " ${RUSTFLAGS:-} " in
  *" --remap-path-prefix=$CARGO_TARGET_DIR=/target "*) ;;
  *) export RUSTFLAGS="${RUSTFLAGS:+$RUSTFLAGS }--remap-path-prefix=$_cvm_cargo_home=/cargo --remap-path-prefix=$CARGO_TARGET_DIR=/target" ;;
esac
unset _cvm_cargo_home
CVM="$CARGO_TARGET_DIR/release/cvm"
