/*
 * checksum16: a real-mode guest that hashes a data block and reports it.
 *
 * Entry: CS:IP = 0000:1000, DS = 0, SI = data address, CX = byte count.
 * It computes h = h * 31 + byte over the block (32-bit, wrapping), writes h
 * with one 32-bit OUT to port 0x510, then halts.
 */
    .code16
    .globl _start
_start:
    xorl    %eax, %eax
    xorl    %ebx, %ebx
1:  imull   $31, %eax, %eax
    movb    (%si), %bl
    addl    %ebx, %eax
    incw    %si
    loop    1b
    movw    $0x510, %dx
    outl    %eax, %dx
    hlt
