#!/usr/bin/env bash
# The sender's engine (C that parses what servers send) checked as native code is:
#
#   scripts/engine-checks.sh sanitized OUT [SRC]    the engine built with AddressSanitizer and
#                                                   UndefinedBehaviorSanitizer into OUT (a
#                                                   _smtp_engine*.so to put in a copy of the
#                                                   package), from the sources in SRC
#   scripts/engine-checks.sh fuzz-build OUT [SRC]   the libFuzzer target (engine/fuzz/replies.c,
#                                                   with ASan and UBSan) built as OUT, from the
#                                                   engine sources in SRC (default: this checkout's)
#   scripts/engine-checks.sh fuzz SECONDS [WORK]    build it, then fuzz for SECONDS from the kept
#                                                   corpus (engine/fuzz/corpus); new inputs go to
#                                                   WORK (default build/fuzz/work), crashes to
#                                                   build/fuzz/crash-*
#
# Needs gcc (the sanitized engine: the same compiler pip uses) and clang-14 with its runtime
# (Debian: clang-14 libclang-rt-14-dev) for libFuzzer, which gcc does not have.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
engine=$root/services/tlsstorm/sender/engine
python=${PYTHON:-$root/.venv/bin/python}
# Any undefined behaviour ends the process (a report alone would let a test pass).
sanitizers=(-fsanitize=address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer -g -O1)

sanitized() {
    local out=$1 source=${2:-$engine} suffix
    mkdir -p "$out"
    suffix=$("$python" -c 'import importlib.machinery as m; print(m.EXTENSION_SUFFIXES[0])')
    # The rustls crate as the wheel links it (Rust's own sanitizers need a nightly compiler:
    # the C around it is what is checked here).
    cargo build --release --locked --quiet --manifest-path "$engine/rustls_client/Cargo.toml" \
        --target-dir "$root/build/sanitized/cargo"
    gcc -shared -fPIC "${sanitizers[@]}" -Wall -Wextra -Werror \
        -I"$("$python" -c 'import sysconfig; print(sysconfig.get_paths()["include"])')" \
        "$source/smtp_engine.c" "$root/build/sanitized/cargo/release/libtlsstorm_rustls.a" \
        -Wl,--exclude-libs,ALL -lssl -lcrypto -lpthread -ldl -lm -o "$out/_smtp_engine$suffix"
    echo "$out/_smtp_engine$suffix"
}

fuzz_build() {
    local out=$1 source=${2:-$engine}
    mkdir -p "$(dirname "$out")"
    clang-14 "${sanitizers[@]}" -fsanitize=fuzzer -Wall -Wextra -Wno-unused-parameter \
        "$source/fuzz/replies.c" -lssl -lcrypto -lpthread -o "$out"
}

fuzz() {
    local seconds=$1 work=${2:-$root/build/fuzz/work}
    fuzz_build "$root/build/fuzz/replies"
    mkdir -p "$work"
    # -max_len: a conversation of some twenty events; -timeout: one input never takes seconds.
    "$root/build/fuzz/replies" -max_total_time="$seconds" -max_len=4096 -timeout=10 \
        -print_final_stats=1 -dict="$engine/fuzz/smtp.dict" \
        -artifact_prefix="$root/build/fuzz/" "$work" "$engine/fuzz/corpus"
}

case ${1:-} in
sanitized) sanitized "$2" "${3:-}" ;;
fuzz-build) fuzz_build "$2" "${3:-}" ;;
fuzz) fuzz "$2" "${3:-}" ;;
*) echo "usage: $0 sanitized OUT [SRC] | fuzz-build OUT [SRC] | fuzz SECONDS [WORK]" >&2; exit 2 ;;
esac
