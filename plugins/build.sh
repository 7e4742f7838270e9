#!/bin/sh
# Builds every plugin in this workspace as a WASM component (wasm32-wasip2, release) into
# plugins/target/wasm32-wasip2/release/<crate_name>.wasm (the host's tests look there), checks
# each output is a component (not a core module), and prints the paths. Exits non-zero on failure.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
target_dir="$here/target"
out="$target_dir/wasm32-wasip2/release"

# rustup installs a rust-toolchain.toml's targets only when it installs the toolchain, so a
# toolchain that was already there may lack wasm32-wasip2 ("can't find crate for `core`").
# Add it (run from here, so the pinned toolchain is the one asked), or stop with the command.
libdir=$(cd "$here" && rustc --print target-libdir --target wasm32-wasip2 2>/dev/null || true)
if [ -z "$libdir" ] || [ ! -d "$libdir" ]; then
    if command -v rustup >/dev/null 2>&1 && (cd "$here" && rustup target add wasm32-wasip2 >&2); then
        :
    else
        toolchain=$(cd "$here" && rustup show active-toolchain 2>/dev/null | cut -d' ' -f1)
        echo "build.sh: the Rust target wasm32-wasip2 is not installed${toolchain:+ for toolchain $toolchain} and could not be added." >&2
        echo "build.sh: run this, then build.sh again:" >&2
        echo "  rustup target add wasm32-wasip2${toolchain:+ --toolchain $toolchain}" >&2
        exit 2
    fi
fi

cargo build --manifest-path "$here/Cargo.toml" --workspace --release \
    --target wasm32-wasip2 --target-dir "$target_dir" "$@"

# Crate names of the cdylib members, from the workspace manifest.
members=$(sed -n '/^members = \[/,/^\]/p' "$here/Cargo.toml" | grep -o '"[^"]*"' | tr -d '"')
status=0
for m in $members; do
    name=$(sed -n 's/^name = "\(.*\)"/\1/p' "$here/$m/Cargo.toml" | head -n1 | tr - _)
    wasm="$out/$name.wasm"
    if [ ! -f "$wasm" ]; then
        echo "build.sh: missing $wasm" >&2
        status=1
        continue
    fi
    # A component starts with "\0asm" + version 0x0d 0x00 + layer 0x01 0x00 (a core module: 01 00 00 00).
    magic=$(od -An -tx1 -N8 "$wasm" | tr -d ' \n')
    if [ "$magic" != "0061736d0d000100" ]; then
        echo "build.sh: $wasm is not a WASM component (header $magic)" >&2
        status=1
        continue
    fi
    echo "$wasm"
done
exit $status
