#!/usr/bin/env bash
# Assembles each guest in Guests/ with binutils and prints its bytes as a Swift
# array literal, the form Fixtures.swift embeds. Run it after editing a guest
# and paste the output over the matching array.
set -euo pipefail
cd "$(dirname "$0")/Guests"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
for source in *.S; do
    name=${source%.S}
    as --32 -o "$work/$name.o" "$source"
    objcopy -O binary -j .text "$work/$name.o" "$work/$name.bin"
    echo "// $name ($(stat -c %s "$work/$name.bin") bytes)"
    xxd -i < "$work/$name.bin" | sed 's/^/    /'
done
