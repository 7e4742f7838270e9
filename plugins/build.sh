#!/bin/sh
# Builds every plugin in this workspace as a WASM component (wasm32-wasip2, release) into
# plugins/target/wasm32-wasip2/release/<crate_name>.wasm (the host's tests look there), checks
# each output is a component (not a core module), and prints the paths. Exits non-zero on failure.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
target_dir="$here/target"
out="$target_dir/wasm32-wasip2/release"

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
