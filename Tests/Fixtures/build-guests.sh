#!/usr/bin/env bash
# Builds the guests in Guests/ with binutils.
#
# A guest with a linker script beside it (NAME.S + NAME.ld) is an ELF64
# kernel: it is assembled, linked into NAME.elf in DIR (default Guests/,
# where the built file is committed beside its source) and not printed.
# Every other guest is a real-mode snippet whose bytes are printed as a Swift
# array literal, the form Fixtures.swift embeds: paste the output over the
# matching array.
#
# usage: build-guests.sh [DIR]
set -euo pipefail
cd "$(dirname "$0")/Guests"
out=$(realpath "${1:-.}")
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
for source in *.S; do
    name=${source%.S}
    if [ -f "$name.ld" ]; then
        as --64 -o "$work/$name.o" "$source"
        ld -m elf_x86_64 -T "$name.ld" --build-id=none -z max-page-size=0x1000 -nostdlib \
            -o "$out/$name.elf" "$work/$name.o"
        echo "// $name.elf ($(stat -c %s "$out/$name.elf") bytes) written to $out" >&2
        continue
    fi
    as --32 -o "$work/$name.o" "$source"
    objcopy -O binary -j .text "$work/$name.o" "$work/$name.bin"
    echo "// $name ($(stat -c %s "$work/$name.bin") bytes)"
    xxd -i < "$work/$name.bin" | sed 's/^/    /'
done
