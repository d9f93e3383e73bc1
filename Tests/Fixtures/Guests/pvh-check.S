# pvh-check: a Xen PVH guest that checks the memory and state it was
# started with, reports each check on the serial port (COM1, 0x3f8) and
# ends through isa-debug-exit (port 0xf4): 0x10 when every check passed
# (snpvmm exits with status 33), 0x11 when one failed (status 35).
#
# Entered per the PVH ABI (xen docs/misc/pvh.pandoc): 32-bit protected mode,
# paging off, flat segments, %ebx = hvm_start_info. The code runs at its
# load address 0x100000; the data segment is linked at 0x40200000 but loaded
# (p_paddr) at 0x200000, so code reaches it by physical address, and a loader
# that placed it by p_vaddr would fail the checks. The checks:
#   bss      every byte of the 8 KiB BSS reads zero
#   data     the 1 KiB data block hashes to the value computed at assembly
#   start    hvm_start_info has the magic and version >= 1
#   cpu      CR0.PE set, CR0.PG clear, CR4 zero, EFLAGS.IF clear
#   cmdline  printed between quotes (at most 1024 bytes, NUL-terminated)
#   memmap   printed; no two entries overlap; the image and module 0 lie
#            in RAM (type 1) entries
#   module   exactly one module; its last 4 bytes are the hash of the rest
# The hash is h = h * 31 + byte over the bytes, from h = 0 (as checksum16).
# Loops stay short: guest kernel code is emulated on some hosts.

    .set SERIAL, 0x3f8
    .set DEBUG_EXIT, 0xf4
    .set START_MAGIC, 0x336ec578
    .set PASS, 0x10
    .set FAIL, 0x11
    .set STACK_TOP, 0x9e000
    .set MAX_CMDLINE, 1024
    .set MAX_MODULE, 0x10000
    .set MAX_MEMMAP, 128
    .set DATA_SIZE, 1024
    .set BSS_SIZE, 8192

# The PVH entry note: XEN_ELFNOTE_PHYS32_ENTRY (18), name "Xen".
    .pushsection .note.Xen, "a", @note
    .balign 4
    .long 4, 4, 18
    .asciz "Xen"
    .long pvh_start
    .popsection

    .section .note.GNU-stack, "", @progbits

    .code32
    .section .text, "ax"
    .globl pvh_start
pvh_start:
    mov $STACK_TOP, %esp
    mov %ebx, %ebp                      # hvm_start_info, kept in %ebp
    xor %edi, %edi                      # failed checks
    mov $msg_started, %esi              # first, so a VMM's time to first byte is its own
    call puts

# bss: all zero.
    mov $bss_start, %esi
    sub $virt_delta, %esi
    mov $BSS_SIZE / 4, %ecx
1:  cmpl $0, (%esi)
    jne bss_bad
    add $4, %esi
    loop 1b
    mov $msg_bss_ok, %esi
    call puts
    jmp data_check
bss_bad:
    mov $msg_bss_bad, %esi
    call fail

# data: the block hashes to what the assembler computed.
data_check:
    mov $data_block, %esi
    sub $virt_delta, %esi
    mov $DATA_SIZE, %ecx
    call hash
    mov $data_expected, %esi
    sub $virt_delta, %esi
    cmp (%esi), %eax
    jne data_bad
    mov $msg_data_ok, %esi
    call puts
    jmp start_check
data_bad:
    mov $msg_data_bad, %esi
    call fail

# start: magic and version. Without them nothing else can be read.
start_check:
    mov $msg_start, %esi
    call puts
    mov %ebp, %eax
    call puthex
    mov $msg_version, %esi
    call puts
    mov 4(%ebp), %eax
    call puthex
    call newline
    cmpl $START_MAGIC, 0(%ebp)
    jne start_bad
    cmpl $1, 4(%ebp)
    jae cpu_check
start_bad:
    mov $msg_start_bad, %esi
    call fail
    jmp finish

# cpu: the state the PVH ABI promises.
cpu_check:
    mov %cr0, %eax
    test $1, %eax
    jz cpu_bad
    test $0x80000000, %eax
    jnz cpu_bad
    mov %cr4, %eax
    test %eax, %eax
    jnz cpu_bad
    pushf
    pop %eax
    test $0x200, %eax
    jnz cpu_bad
    mov $msg_cpu_ok, %esi
    call puts
    jmp cmdline_check
cpu_bad:
    mov $msg_cpu_bad, %esi
    call fail

# cmdline: printed as given.
cmdline_check:
    mov $msg_cmdline, %esi
    call puts
    cmpl $0, 28(%ebp)
    jne cmdline_bad
    mov 24(%ebp), %esi
    test %esi, %esi
    jz cmdline_bad
    mov $MAX_CMDLINE, %ecx
1:  lodsb
    test %al, %al
    jz 2f
    call putc
    loop 1b
    jmp cmdline_bad
2:  mov $msg_quote, %esi
    call puts
    jmp memmap_check
cmdline_bad:
    mov $msg_quote, %esi
    call puts
    mov $msg_cmdline_bad, %esi
    call fail

# memmap: print each entry, check that no two overlap, then coverage.
# The PVH ABI does not order the map (QEMU's is not sorted), so every pair
# is compared. The (start, end) pairs are kept on the stack.
memmap_check:
    mov $msg_memmap, %esi
    call puts
    mov 48(%ebp), %eax
    call puthex
    mov $msg_entries, %esi
    call puts
    mov 48(%ebp), %ecx
    test %ecx, %ecx
    jz memmap_bad
    cmp $MAX_MEMMAP, %ecx
    ja memmap_bad
    cmpl $0, 44(%ebp)
    jne memmap_bad
    mov 40(%ebp), %ebx                  # entry pointer
    sub $MAX_MEMMAP * 16, %esp
    mov %esp, %edx                      # pair pointer
1:  push %ecx
    push %edx
    mov $msg_entry, %esi
    call puts
    mov 4(%ebx), %eax
    call puthex
    mov 0(%ebx), %eax
    call puthex
    mov $msg_size, %esi
    call puts
    mov 12(%ebx), %eax
    call puthex
    mov 8(%ebx), %eax
    call puthex
    mov $msg_type, %esi
    call puts
    mov 16(%ebx), %eax
    call puthex
    call newline
    pop %edx
    pop %ecx
    mov 0(%ebx), %eax                   # start
    mov %eax, 0(%edx)
    mov 4(%ebx), %eax
    mov %eax, 4(%edx)
    mov 0(%ebx), %eax                   # end = start + size, not past 2^64
    add 8(%ebx), %eax
    mov %eax, 8(%edx)
    mov 4(%ebx), %eax
    adc 12(%ebx), %eax
    jc memmap_bad
    mov %eax, 12(%edx)
    add $24, %ebx
    add $16, %edx
    dec %ecx
    jnz 1b
    mov 48(%ebp), %ecx
    mov %esp, %esi                      # pair i
2:  dec %ecx                            # pairs after i
    jz 5f
    lea 16(%esi), %edx                  # pair j
    push %ecx
3:  lea 8(%edx), %eax                   # end j <= start i: apart
    mov %esi, %ebx
    call le64
    jnz 4f
    lea 8(%esi), %eax                   # end i <= start j: apart
    mov %edx, %ebx
    call le64
    jnz 4f
    jmp memmap_bad
4:  add $16, %edx
    dec %ecx
    jnz 3b
    pop %ecx
    add $16, %esi
    jmp 2b
5:  add $MAX_MEMMAP * 16, %esp
    # coverage: text, then data and BSS (the start info may sit in reserved memory, as QEMU puts it)
    mov $text_start, %eax
    mov $text_end, %edx
    call covered
    jz memmap_bad
    mov $data_start, %eax
    sub $virt_delta, %eax
    mov $bss_end, %edx
    sub $virt_delta, %edx
    call covered
    jz memmap_bad
    mov $msg_memmap_ok, %esi
    call puts
    jmp module_check
memmap_bad:
    mov $STACK_TOP, %esp                # checks run at the top level: nothing else is on the stack
    mov $msg_memmap_bad, %esi
    call fail

# module: one module whose last 4 bytes hash the rest.
module_check:
    cmpl $1, 12(%ebp)
    jne module_bad
    cmpl $0, 20(%ebp)
    jne module_bad
    mov 16(%ebp), %ebx                  # hvm_modlist_entry
    test %ebx, %ebx
    jz module_bad
    mov $msg_module, %esi
    call puts
    mov 0(%ebx), %eax
    call puthex
    mov $msg_size, %esi
    call puts
    mov 8(%ebx), %eax
    call puthex
    call newline
    cmpl $0, 4(%ebx)
    jne module_bad
    cmpl $0, 12(%ebx)
    jne module_bad
    mov 8(%ebx), %ecx
    cmp $4, %ecx
    jb module_bad
    cmp $MAX_MODULE, %ecx
    ja module_bad
    mov 0(%ebx), %eax
    mov %eax, %edx
    add %ecx, %edx
    jc module_bad
    call covered
    jz module_bad
    mov 0(%ebx), %esi
    mov 8(%ebx), %ecx
    sub $4, %ecx
    jz 1f
    call hash
    jmp 2f
1:  xor %eax, %eax
2:  cmp (%esi), %eax                    # %esi now points at the stored hash
    jne module_bad
    push %eax
    mov $msg_module_sum, %esi
    call puts
    pop %eax
    call puthex
    mov $msg_ok, %esi
    call puts
    jmp finish
module_bad:
    mov $msg_module_bad, %esi
    call fail

finish:
    test %edi, %edi
    jnz 1f
    mov $msg_pass, %esi
    call puts
    mov $PASS, %eax
    jmp 2f
1:  mov $msg_fail, %esi
    call puts
    mov $FAIL, %eax
2:  mov $DEBUG_EXIT, %dx
    out %eax, %dx
3:  cli
    hlt
    jmp 3b

# hash: %eax = hash of %ecx (> 0) bytes at %esi; %esi ends past them.
hash:
    push %edx
    xor %eax, %eax
1:  imul $31, %eax, %eax
    movzbl (%esi), %edx
    add %edx, %eax
    inc %esi
    loop 1b
    pop %edx
    ret

# covered: ZF clear when [%eax, %edx) lies inside one RAM entry of the memory map.
covered:
    push %ebx
    push %ecx
    push %esi
    mov 40(%ebp), %ebx
    mov 48(%ebp), %ecx
1:  cmpl $1, 16(%ebx)                   # RAM
    jne 2f
    cmpl $0, 4(%ebx)                    # starts below 4 GiB
    jne 2f
    cmp 0(%ebx), %eax                   # entry start <= range start
    jb 2f
    mov 0(%ebx), %esi
    add 8(%ebx), %esi
    jc 3f                               # ends at or past 4 GiB
    cmpl $0, 12(%ebx)
    jne 3f
    cmp %esi, %edx                      # range end <= entry end
    jbe 3f
2:  add $24, %ebx
    loop 1b
    xor %eax, %eax                      # sets ZF: not covered
    jmp 4f
3:  or $1, %esi                         # clears ZF: covered
4:  pop %esi
    pop %ecx
    pop %ebx
    ret

# le64: ZF clear when the 64-bit value at %eax is at most the one at %ebx.
le64:
    push %ecx
    mov 4(%eax), %ecx
    cmp 4(%ebx), %ecx
    jb 1f
    ja 2f
    mov 0(%eax), %ecx
    cmp 0(%ebx), %ecx
    jbe 1f
2:  xor %ecx, %ecx                      # sets ZF: greater
    jmp 3f
1:  or $1, %ecx                         # clears ZF: at most
3:  pop %ecx
    ret

# fail: print the message at %esi and count a failed check.
fail:
    inc %edi
    jmp puts

# puts: print the NUL-terminated string at %esi.
puts:
    push %eax
1:  lodsb
    test %al, %al
    jz 2f
    call putc
    jmp 1b
2:  pop %eax
    ret

newline:
    push %eax
    mov $'\n', %al
    call putc
    pop %eax
    ret

# puthex: print %eax as 8 lowercase hex digits.
puthex:
    push %ecx
    push %edx
    mov %eax, %edx
    mov $8, %ecx
1:  rol $4, %edx
    mov %dl, %al
    and $0xf, %al
    add $'0', %al
    cmp $'9', %al
    jbe 2f
    add $'a' - '9' - 1, %al
2:  call putc
    loop 1b
    pop %edx
    pop %ecx
    ret

# putc: send %al. The transmitter of an emulated UART is always ready.
putc:
    push %edx
    mov $SERIAL, %dx
    out %al, %dx
    pop %edx
    ret

msg_started:     .asciz "pvh-check: started\n"
msg_bss_ok:      .asciz "pvh-check: bss zero ok\n"
msg_bss_bad:     .asciz "pvh-check: FAIL bss is not zero\n"
msg_data_ok:     .asciz "pvh-check: data hash ok\n"
msg_data_bad:    .asciz "pvh-check: FAIL data hash differs\n"
msg_start:       .asciz "pvh-check: start_info 0x"
msg_version:     .asciz " version 0x"
msg_start_bad:   .asciz "pvh-check: FAIL start_info magic or version\n"
msg_cpu_ok:      .asciz "pvh-check: cpu ok\n"
msg_cpu_bad:     .asciz "pvh-check: FAIL cpu state is not the PVH entry state\n"
msg_cmdline:     .asciz "pvh-check: cmdline \""
msg_quote:       .asciz "\"\n"
msg_cmdline_bad: .asciz "pvh-check: FAIL cmdline missing or unterminated\n"
msg_memmap:      .asciz "pvh-check: memmap 0x"
msg_entries:     .asciz " entries\n"
msg_entry:       .asciz "pvh-check:   0x"
msg_size:        .asciz " size 0x"
msg_type:        .asciz " type 0x"
msg_memmap_ok:   .asciz "pvh-check: memmap ok\n"
msg_memmap_bad:  .asciz "pvh-check: FAIL memmap\n"
msg_module:      .asciz "pvh-check: module 0x"
msg_module_sum:  .asciz "pvh-check: module hash 0x"
msg_ok:          .asciz " ok\n"
msg_module_bad:  .asciz "pvh-check: FAIL module\n"
msg_pass:        .asciz "pvh-check: PASS\n"
msg_fail:        .asciz "pvh-check: FAIL\n"

# The data block: byte i is (i * 7 + 3) mod 256; its hash is computed here.
    .section .data, "aw"
data_block:
    .set i, 0
    .set h, 0
    .rept DATA_SIZE
    .byte (i * 7 + 3) & 0xff
    .set h, (h * 31 + ((i * 7 + 3) & 0xff)) & 0xffffffff
    .set i, i + 1
    .endr
data_expected:
    .long h

    .section .bss, "aw", @nobits
    .balign 4
    .skip BSS_SIZE
