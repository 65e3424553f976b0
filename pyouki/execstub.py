"""The exec stub: the container's program is started by a tiny static program that runs from a
sealed memfd, so the container process is never the host's Python interpreter (CVE-2019-5736).

Init and exec's child are the host interpreter until their last execve. Were they to execve the
container's program directly, `process.args[0] = /proc/self/exe` (or a `#!/proc/self/exe` script)
would make the container process *be* the host interpreter, whose inode a process in the container
can then open through /proc/PID/exe and, once no Python process runs it, write. Instead they
execveat() a sealed memfd holding the stub below with argv = [path, *process.args]; the stub runs
execve(argv[0], &argv[1], envp), so the program gets process.args as its argv, and at that moment
/proc/self/exe is the sealed memfd: running /proc/self/exe (directly or as a #! interpreter) from
the container only reaches the stub again, which refuses (it knows pyouki started it by AT_EXECFN,
which is `/dev/fd/N` after execveat(fd, "", AT_EMPTY_PATH), `/proc/self/fd/N` by the /proc path).
A failed execve prints runc's line, `exec PATH: REASON`, and exits 1, as runc's init does.

Two execs give the program the credentials one would: the stub has no file capabilities and no
set-id bits, so its exec changes none of what the next one computes from (uids, inheritable,
bounding and ambient sets). One difference remains: a root process whose permitted set is smaller
than its bounding set gains capabilities at the first exec, so AT_SECURE is set for the stub, not
for the program.

Where there is no stub for the machine, or the kernel refuses executable memfds
(vm.memfd_noexec=2), init falls back to refusing a program (or a chain of #! interpreters) whose
inode is the interpreter's own.

The stub is kept as bytes, one per machine; their sources follow (GNU as: `as --64 -o stub.o stub.s
&& objcopy -O binary stub.o stub.bin` gives exactly STUBS["x86_64"], aarch64-linux-gnu-as and
-objcopy STUBS["aarch64"]; tests/test_execstub.py checks both, and runs the aarch64 one under
qemu-aarch64 where it is installed).
"""

from __future__ import annotations

import os

from pyouki.errors import PyoukiError

# --- x86_64 source (begin) ---
#         .intel_syntax noprefix
#         .set    BASE, 0x400000
#         .set    AT_EXECFN, 31
#         .set    SYS_write, 1
#         .set    SYS_execve, 59
#         .set    SYS_exit_group, 231
# ehdr:   .byte   0x7f, 'E', 'L', 'F', 2, 1, 1, 0 # 64-bit, little endian, ELF v1, System V ABI
#         .quad   0
#         .word   2                               # e_type: ET_EXEC
#         .word   62                              # e_machine: EM_X86_64
#         .long   1                               # e_version
#         .quad   BASE + start - ehdr             # e_entry
#         .quad   phdr - ehdr                     # e_phoff
#         .quad   0                               # e_shoff: no sections
#         .long   0                               # e_flags
#         .word   64, 56, 2                       # e_ehsize, e_phentsize, e_phnum
#         .word   0, 0, 0                         # e_shentsize, e_shnum, e_shstrndx
# phdr:   .long   1, 5                            # PT_LOAD, PF_R|PF_X: the whole file
#         .quad   0, BASE, BASE, end - ehdr, end - ehdr, 0x1000
#         .long   0x6474e551, 6                   # PT_GNU_STACK, PF_R|PF_W: no executable stack
#         .quad   0, 0, 0, 0, 0, 16
#
# # rsp: argc, argv[0..argc-1], NULL, envp..., NULL, auxv pairs..., AT_NULL
# start:  xor     r14d, r14d                      # r14 = AT_EXECFN, once found
#         mov     rbx, [rsp]                      # rbx = argc
#         lea     r12, [rsp + 8]                  # r12 = argv
#         lea     r13, [r12 + rbx*8 + 8]          # r13 = envp
#         mov     rdi, r13
# 1:      add     rdi, 8                          # skip envp up to its NULL
#         cmp     qword ptr [rdi - 8], 0
#         jne     1b
# 2:      mov     rax, [rdi]                      # rdi = auxv: find AT_EXECFN
#         test    rax, rax
#         jz      refuse                          # AT_NULL: no AT_EXECFN
#         add     rdi, 16
#         cmp     rax, AT_EXECFN
#         jne     2b
#         mov     r14, [rdi - 8]                  # r14 = the name the kernel executed
#         mov     rdi, r14
#         lea     rsi, [rip + fd_dev]
#         call    prefix
#         je      run
#         mov     rdi, r14
#         lea     rsi, [rip + fd_proc]
#         call    prefix
#         jne     refuse
# run:    test    rbx, rbx                        # pyouki passes [path, args...]: never empty
#         jz      refuse
#         mov     rdi, [r12]                      # execve(argv[0], &argv[1], envp)
#         lea     rsi, [r12 + 8]
#         mov     rdx, r13
#         mov     eax, SYS_execve
#         syscall
#         neg     eax                             # it failed: eax = errno
#         mov     r15d, eax
#         sub     rsp, 8192                       # "exec PATH: REASON\n", as runc words it
#         mov     rdi, rsp
#         lea     rsi, [rip + s_exec]
#         call    append
#         mov     rsi, [r12]
#         call    append
#         lea     rsi, [rip + s_colon]
#         call    append
#         lea     rsi, [rip + reasons]            # records: errno byte, NUL-terminated text; 0 ends
# 3:      movzx   eax, byte ptr [rsi]
#         test    eax, eax
#         jz      4f
#         inc     rsi
#         cmp     eax, r15d
#         je      5f
# 6:      lodsb                                   # skip this record's text
#         test    al, al
#         jnz     6b
#         jmp     3b
# 4:      lea     rsi, [rip + s_errno]            # not in the table: "errno N"
#         call    append
#         mov     eax, r15d
#         call    decimal
#         jmp     7f
# 5:      call    append
# 7:      mov     ebp, 1                          # runc's status for a failed exec
#         jmp     say
#
# refuse: sub     rsp, 8192                       # run again from inside the container
#         mov     rdi, rsp
#         lea     rsi, [rip + s_exec]
#         call    append
#         mov     rsi, r14
#         test    rsi, rsi
#         jz      8f
#         call    append
# 8:      lea     rsi, [rip + s_refuse]
#         call    append
#         mov     ebp, 126
#
# say:    mov     byte ptr [rdi], 10              # the newline, then one write of the line
#         inc     rdi
#         mov     rdx, rdi
#         sub     rdx, rsp
#         mov     rsi, rsp
#         mov     edi, 2
#         mov     eax, SYS_write
#         syscall
#         mov     edi, ebp
#         mov     eax, SYS_exit_group
#         syscall
#
# # prefix: ZF set when the string at rdi starts with the string at rsi
# prefix: lodsb
#         test    al, al
#         jz      9f
#         cmp     al, [rdi]
#         jne     9f
#         inc     rdi
#         jmp     prefix
# 9:      ret
#
# # append: copy the string at rsi to rdi (at most 4000 bytes), rdi left after it
# append: mov     ecx, 4000
# 10:     lodsb
#         test    al, al
#         jz      11f
#         stosb
#         loop    10b
# 11:     ret
#
# # decimal: write eax (unsigned) in decimal at rdi, rdi left after it
# decimal:
#         mov     ecx, 10
#         mov     rsi, rsp                        # digits go below the return address, reversed
# 12:     xor     edx, edx
#         div     ecx
#         add     dl, '0'
#         dec     rsi
#         mov     [rsi], dl
#         test    eax, eax
#         jnz     12b
# 13:     mov     al, [rsi]
#         stosb
#         inc     rsi
#         cmp     rsi, rsp
#         jne     13b
#         ret
#
# fd_dev: .asciz  "/dev/fd/"                      # how execveat(fd, "", ..., AT_EMPTY_PATH) names it
# fd_proc:.asciz  "/proc/self/fd/"                # the /proc fallback's name
# s_exec: .asciz  "exec "
# s_colon:.asciz  ": "
# s_errno:.asciz  "errno "
# s_refuse:
#         .asciz  ": permission denied (pyouki's exec stub)"
# reasons:                                        # what Go's syscall.Errno.Error() says (runc)
#         .byte   1  ; .asciz "operation not permitted"
#         .byte   2  ; .asciz "no such file or directory"
#         .byte   5  ; .asciz "input/output error"
#         .byte   7  ; .asciz "argument list too long"
#         .byte   8  ; .asciz "exec format error"
#         .byte   9  ; .asciz "bad file descriptor"
#         .byte   11 ; .asciz "resource temporarily unavailable"
#         .byte   12 ; .asciz "cannot allocate memory"
#         .byte   13 ; .asciz "permission denied"
#         .byte   14 ; .asciz "bad address"
#         .byte   20 ; .asciz "not a directory"
#         .byte   21 ; .asciz "is a directory"
#         .byte   22 ; .asciz "invalid argument"
#         .byte   23 ; .asciz "too many open files in system"
#         .byte   24 ; .asciz "too many open files"
#         .byte   26 ; .asciz "text file busy"
#         .byte   36 ; .asciz "file name too long"
#         .byte   38 ; .asciz "function not implemented"
#         .byte   40 ; .asciz "too many levels of symbolic links"
#         .byte   79 ; .asciz "can not access a needed shared library"
#         .byte   80 ; .asciz "accessing a corrupted shared library"
#         .byte   0
# end:
# --- x86_64 source (end) ---
# --- aarch64 source (begin) ---
#         .set    BASE, 0x400000
#         .set    AT_EXECFN, 31
#         .set    SYS_write, 64
#         .set    SYS_execve, 221
#         .set    SYS_exit_group, 94
# ehdr:   .byte   0x7f, 'E', 'L', 'F', 2, 1, 1, 0 // 64-bit, little endian, ELF v1, System V ABI
#         .quad   0
#         .hword  2                               // e_type: ET_EXEC
#         .hword  183                             // e_machine: EM_AARCH64
#         .word   1                               // e_version
#         .quad   BASE + start - ehdr             // e_entry
#         .quad   phdr - ehdr                     // e_phoff
#         .quad   0                               // e_shoff: no sections
#         .word   0                               // e_flags
#         .hword  64, 56, 2                       // e_ehsize, e_phentsize, e_phnum
#         .hword  0, 0, 0                         // e_shentsize, e_shnum, e_shstrndx
# phdr:   .word   1, 5                            // PT_LOAD, PF_R|PF_X: the whole file
#         .quad   0, BASE, BASE, end - ehdr, end - ehdr, 0x10000
#         .word   0x6474e551, 6                   // PT_GNU_STACK, PF_R|PF_W: no executable stack
#         .quad   0, 0, 0, 0, 0, 16
#
# // sp: argc, argv[0..argc-1], NULL, envp..., NULL, auxv pairs..., AT_NULL
# start:  mov     x23, #0                         // x23 = AT_EXECFN, once found
#         ldr     x19, [sp]                       // x19 = argc
#         add     x20, sp, #8                     // x20 = argv
#         add     x21, x20, x19, lsl #3
#         add     x21, x21, #8                    // x21 = envp
#         mov     x0, x21
# 1:      ldr     x1, [x0], #8                    // skip envp up to its NULL
#         cbnz    x1, 1b
# 2:      ldp     x1, x2, [x0], #16               // x0 = auxv: find AT_EXECFN
#         cbz     x1, refuse                      // AT_NULL: no AT_EXECFN
#         cmp     x1, #AT_EXECFN
#         b.ne    2b
#         mov     x23, x2                         // the name the kernel executed
#         mov     x0, x23
#         adr     x1, fd_dev
#         bl      prefix
#         cbnz    x0, run
#         mov     x0, x23
#         adr     x1, fd_proc
#         bl      prefix
#         cbz     x0, refuse
# run:    cbz     x19, refuse                     // pyouki passes [path, args...]: never empty
#         ldr     x0, [x20]                       // execve(argv[0], &argv[1], envp)
#         add     x1, x20, #8
#         mov     x2, x21
#         mov     x8, #SYS_execve
#         svc     #0
#         neg     x24, x0                         // it failed: x24 = errno
#         sub     sp, sp, #8192                   // "exec PATH: REASON\n", as runc words it
#         mov     x9, sp                          // x9: where the line goes on
#         adr     x1, s_exec
#         bl      append
#         ldr     x1, [x20]
#         bl      append
#         adr     x1, s_colon
#         bl      append
#         adr     x1, reasons                     // records: errno byte, NUL-terminated text; 0 ends
# 3:      ldrb    w2, [x1], #1
#         cbz     w2, 4f
#         cmp     x2, x24
#         b.eq    5f
# 6:      ldrb    w2, [x1], #1                    // skip this record's text
#         cbnz    w2, 6b
#         b       3b
# 4:      adr     x1, s_errno                     // not in the table: "errno N"
#         bl      append
#         mov     x0, x24
#         bl      decimal
#         b       7f
# 5:      bl      append
# 7:      mov     x25, #1                         // runc's status for a failed exec
#         b       say
#
# refuse: sub     sp, sp, #8192                   // run again from inside the container
#         mov     x9, sp
#         adr     x1, s_exec
#         bl      append
#         mov     x1, x23
#         cbz     x1, 8f
#         bl      append
# 8:      adr     x1, s_refuse
#         bl      append
#         mov     x25, #126
#
# say:    mov     w2, #10                         // the newline, then one write of the line
#         strb    w2, [x9], #1
#         mov     x1, sp
#         sub     x2, x9, x1
#         mov     x0, #2
#         mov     x8, #SYS_write
#         svc     #0
#         mov     x0, x25
#         mov     x8, #SYS_exit_group
#         svc     #0
#
# // prefix: x0 = 1 when the string at x0 starts with the string at x1, else 0
# prefix: ldrb    w2, [x1], #1
#         cbz     w2, 9f
#         ldrb    w3, [x0], #1
#         cmp     w2, w3
#         b.eq    prefix
#         mov     x0, #0
#         ret
# 9:      mov     x0, #1
#         ret
#
# // append: copy the string at x1 to x9 (at most 4000 bytes), x9 left after it
# append: mov     x3, #4000
# 10:     ldrb    w2, [x1], #1
#         cbz     w2, 11f
#         strb    w2, [x9], #1
#         subs    x3, x3, #1
#         b.ne    10b
# 11:     ret
#
# // decimal: write x0 in decimal at x9, x9 left after it (digits built at the buffer's end)
# decimal:
#         add     x4, sp, #8192
#         mov     x5, #10
# 12:     udiv    x6, x0, x5
#         msub    x7, x6, x5, x0
#         add     w7, w7, #'0'
#         strb    w7, [x4, #-1]!
#         mov     x0, x6
#         cbnz    x0, 12b
#         add     x5, sp, #8192
# 13:     ldrb    w7, [x4], #1
#         strb    w7, [x9], #1
#         cmp     x4, x5
#         b.ne    13b
#         ret
# fd_dev: .asciz  "/dev/fd/"                      // how execveat(fd, "", ..., AT_EMPTY_PATH) names it
# fd_proc:.asciz  "/proc/self/fd/"                // the /proc fallback's name
# s_exec: .asciz  "exec "
# s_colon:.asciz  ": "
# s_errno:.asciz  "errno "
# s_refuse:
#         .asciz  ": permission denied (pyouki's exec stub)"
# reasons:                                        // what Go's syscall.Errno.Error() says (runc)
#         .byte   1  ; .asciz "operation not permitted"
#         .byte   2  ; .asciz "no such file or directory"
#         .byte   5  ; .asciz "input/output error"
#         .byte   7  ; .asciz "argument list too long"
#         .byte   8  ; .asciz "exec format error"
#         .byte   9  ; .asciz "bad file descriptor"
#         .byte   11 ; .asciz "resource temporarily unavailable"
#         .byte   12 ; .asciz "cannot allocate memory"
#         .byte   13 ; .asciz "permission denied"
#         .byte   14 ; .asciz "bad address"
#         .byte   20 ; .asciz "not a directory"
#         .byte   21 ; .asciz "is a directory"
#         .byte   22 ; .asciz "invalid argument"
#         .byte   23 ; .asciz "too many open files in system"
#         .byte   24 ; .asciz "too many open files"
#         .byte   26 ; .asciz "text file busy"
#         .byte   36 ; .asciz "file name too long"
#         .byte   38 ; .asciz "function not implemented"
#         .byte   40 ; .asciz "too many levels of symbolic links"
#         .byte   79 ; .asciz "can not access a needed shared library"
#         .byte   80 ; .asciz "accessing a corrupted shared library"
#         .byte   0
# end:
# --- aarch64 source (end) ---

STUBS = {
    "x86_64": bytes.fromhex(
        "7f454c4602010100000000000000000002003e0001000000b00040000000000040000000000000000000000000000000"
        "000000004000380002000000000000000100000005000000000000000000000000004000000000000000400000000000"
        "7d040000000000007d04000000000000001000000000000051e574640600000000000000000000000000000000000000"
        "00000000000000000000000000000000000000000000000010000000000000004531f6488b1c244c8d6424084d8d6cdc"
        "084c89ef4883c70848837ff80075f5488b074885c00f84bf0000004883c7104883f81f75ea4c8b77f84c89f7488d3540"
        "010000e8fa00000074154c89f7488d3538010000e8e90000000f858b0000004885db0f8482000000498b3c24498d7424"
        "084c89eab83b0000000f05f7d84189c74881ec002000004889e7488d350a010000e8bb000000498b3424e8b200000048"
        "8d35fb000000e8a6000000488d35220100000fb60685c0740f48ffc64439f8741dac84c075fbebea488d35d5000000e8"
        "7d0000004489f8e883000000eb05e86e000000bd01000000eb344881ec002000004889e7488d35a0000000e851000000"
        "4c89f64885f67405e844000000488d3597000000e838000000bd7e000000c6070a48ffc74889fa4829e24889e6bf0200"
        "0000b8010000000f0589efb8e70000000f05ac84c074093a07750548ffc7ebf2c3b9a00f0000ac84c07403aae2f8c3b9"
        "0a0000004889e631d2f7f180c23048ffce881685c075f08a06aa48ffc64839e675f5c32f6465762f66642f002f70726f"
        "632f73656c662f66642f006578656320003a20006572726e6f20003a207065726d697373696f6e2064656e6965642028"
        "70796f756b692773206578656320737475622900016f7065726174696f6e206e6f74207065726d697474656400026e6f"
        "20737563682066696c65206f72206469726563746f72790005696e7075742f6f7574707574206572726f720007617267"
        "756d656e74206c69737420746f6f206c6f6e6700086578656320666f726d6174206572726f7200096261642066696c65"
        "2064657363726970746f72000b7265736f757263652074656d706f726172696c7920756e617661696c61626c65000c63"
        "616e6e6f7420616c6c6f63617465206d656d6f7279000d7065726d697373696f6e2064656e696564000e626164206164"
        "647265737300146e6f742061206469726563746f7279001569732061206469726563746f72790016696e76616c696420"
        "617267756d656e740017746f6f206d616e79206f70656e2066696c657320696e2073797374656d0018746f6f206d616e"
        "79206f70656e2066696c6573001a746578742066696c652062757379002466696c65206e616d6520746f6f206c6f6e67"
        "002666756e6374696f6e206e6f7420696d706c656d656e7465640028746f6f206d616e79206c6576656c73206f662073"
        "796d626f6c6963206c696e6b73004f63616e206e6f74206163636573732061206e656564656420736861726564206c69"
        "62726172790050616363657373696e67206120636f7272757074656420736861726564206c6962726172790000"
    ),
    "aarch64": bytes.fromhex(
        "7f454c460201010000000000000000000200b70001000000b00040000000000040000000000000000000000000000000"
        "000000004000380002000000000000000100000005000000000000000000000000004000000000000000400000000000"
        "92040000000000009204000000000000000001000000000051e574640600000000000000000000000000000000000000"
        "0000000000000000000000000000000000000000000000001000000000000000170080d2f30340f9f4230091950e138b"
        "b5220091e00315aa018440f8e1ffffb50108c1a8610500b43f7c00f1a1ffff54f70302aae00317aa010b001039000094"
        "a00000b5e00317aac10a003035000094000400b4f30300b4800240f981220091e20315aaa81b80d2010000d4f80300cb"
        "ff0b40d1e9030091c109001032000094810240f930000094610900502e000094c10a003022144038c20000345f0018eb"
        "2001005422144038e2ffff35faffff174108003024000094e00318aa290000940200001420000094390080d20b000014"
        "ff0b40d1e9030091c10600101a000094e10317aa410000b417000094a106001015000094d90f80d24201805222150038"
        "e1030091220101cb400080d2080880d2010000d4e00319aac80b80d2010000d422144038c2000034031440385f00036b"
        "80ffff54000080d2c0035fd6200080d2c0035fd603f481d2221440388200003422150038630400f181ffff54c0035fd6"
        "e40b4091450180d20608c59ac780059be7c0001187fc1f38e00306aa60ffffb5e50b409187144038271500389f0005eb"
        "a1ffff54c0035fd62f6465762f66642f002f70726f632f73656c662f66642f006578656320003a20006572726e6f2000"
        "3a207065726d697373696f6e2064656e696564202870796f756b692773206578656320737475622900016f7065726174"
        "696f6e206e6f74207065726d697474656400026e6f20737563682066696c65206f72206469726563746f72790005696e"
        "7075742f6f7574707574206572726f720007617267756d656e74206c69737420746f6f206c6f6e670008657865632066"
        "6f726d6174206572726f7200096261642066696c652064657363726970746f72000b7265736f757263652074656d706f"
        "726172696c7920756e617661696c61626c65000c63616e6e6f7420616c6c6f63617465206d656d6f7279000d7065726d"
        "697373696f6e2064656e696564000e626164206164647265737300146e6f742061206469726563746f72790015697320"
        "61206469726563746f72790016696e76616c696420617267756d656e740017746f6f206d616e79206f70656e2066696c"
        "657320696e2073797374656d0018746f6f206d616e79206f70656e2066696c6573001a746578742066696c6520627573"
        "79002466696c65206e616d6520746f6f206c6f6e67002666756e6374696f6e206e6f7420696d706c656d656e74656400"
        "28746f6f206d616e79206c6576656c73206f662073796d626f6c6963206c696e6b73004f63616e206e6f742061636365"
        "73732061206e656564656420736861726564206c6962726172790050616363657373696e67206120636f727275707465"
        "6420736861726564206c6962726172790000"
    ),
}

MFD_EXEC = 0x10  # linux 6.3+: executable even under vm.memfd_noexec=1 (os lacks it before 3.12)
# F_SEAL_SEAL | F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_WRITE: nothing can change the stub any more
SEALS = 0x1 | 0x2 | 0x4 | 0x8
F_ADD_SEALS = 1033
MAX_SCRIPT_DEPTH = 5  # the kernel follows at most 4 levels of #! interpreters (BINPRM_MAX_RECURSION)


class ExecStub:
    """The sealed stub of one process (init or exec's child), made before the container can touch
    anything: `fd` is the memfd (close-on-exec, -1 when there is none); without it `runtime_exe`
    is the (st_dev, st_ino) of our own interpreter, for the fallback check."""

    def __init__(self, fd: int, runtime_exe: tuple[int, int] | None) -> None:
        self.fd = fd
        self.runtime_exe = runtime_exe

    @classmethod
    def prepare(cls, lowest: int) -> ExecStub:
        """Write the stub for this machine into a sealed memfd numbered lowest or above, clear of the
        fds preserved for the container (needs no filesystem: call it early, before pivot_root and
        before a seccomp filter that may not allow memfd_create)."""
        code = STUBS.get(os.uname().machine)
        if code is not None:
            fd = _sealed_memfd(code, lowest)
            if fd >= 0:
                return cls(fd, None)
        st = os.stat("/proc/self/exe")
        return cls(-1, (st.st_dev, st.st_ino))

    def execute(self, exe: str, args: list[str], env: dict[str, str], filtered: bool = False) -> None:
        """execve args (args[0] is the program's argv[0]) with exe, through the stub; returns only
        by raising the OSError of the failed execve.

        filtered: a seccomp filter is (or is about to be) in force. A profile may know execve but
        not execveat (its action for it may even be to kill), so the memfd is then run by its
        /proc/self/fd path when /proc shows it; execveat(fd, "", AT_EMPTY_PATH) otherwise."""
        if self.fd < 0:
            self.refuse_runtime_exe(exe)
            os.execve(exe, args, env)
        argv = [exe, *args]
        path = f"/proc/self/fd/{self.fd}"
        if filtered and self._shown_at(path):
            os.execve(path, argv, env)
        try:
            os.execve(self.fd, argv, env)  # fexecve: execveat(fd, "", argv, env, AT_EMPTY_PATH)
        except OSError as e:
            if filtered or not self._shown_at(path):
                raise
            first = e
        try:
            os.execve(path, argv, env)  # execveat refused, by a filter loaded earlier or the kernel
        except OSError:
            raise first from None

    def _shown_at(self, path: str) -> bool:
        """Whether path (in the container's /proc, if any) is our memfd."""
        try:
            st, mine = os.stat(path), os.fstat(self.fd)
        except OSError:
            return False
        return (st.st_dev, st.st_ino) == (mine.st_dev, mine.st_ino)

    def refuse_runtime_exe(self, exe: str) -> None:
        """Without a stub: refuse a program, or a #! interpreter of it, that is our own interpreter
        (/proc/self/exe, /proc/PID/exe of a runtime process, a link to it)."""
        path = exe
        for _ in range(MAX_SCRIPT_DEPTH):
            try:
                st = os.stat(path)
                with open(path, "rb") as f:
                    head = f.read(256)
            except OSError:
                return  # the execve reports it
            if (st.st_dev, st.st_ino) == self.runtime_exe:
                raise PyoukiError(f"process.args[0]: {exe} is the runtime's own interpreter "
                                  "(its inode must not be reachable from the container)")
            interpreter = script_interpreter(head)
            if interpreter is None:
                return
            path = interpreter


def script_interpreter(head: bytes) -> str | None:
    """The interpreter path of a #! line (the kernel's rules: up to the first blank), or None."""
    if not head.startswith(b"#!"):
        return None
    line = head[2:].split(b"\n", 1)[0].replace(b"\t", b" ").strip(b" ")
    if not line:
        return None
    return os.fsdecode(line.split(b" ", 1)[0])


def _sealed_memfd(code: bytes, lowest: int) -> int:
    """A close-on-exec memfd numbered lowest or above, holding code, sealed against every change;
    -1 when the kernel will not give an executable one."""
    try:
        fd = os.memfd_create("pyouki-exec-stub", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING | MFD_EXEC)
    except OSError as e:
        if e.errno != 22:  # EINVAL: a kernel before 6.3 does not know MFD_EXEC (and needs none)
            return -1  # EACCES: vm.memfd_noexec=2 forbids executable memfds
        try:
            fd = os.memfd_create("pyouki-exec-stub", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        except OSError:
            return -1
    try:
        view = memoryview(code)
        while view:
            view = view[os.write(fd, view):]
        import fcntl  # imported by pyouki.become before any fork

        fcntl.fcntl(fd, F_ADD_SEALS, SEALS)
        if fd < lowest:
            low, fd = fd, fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, lowest)
            os.close(low)
    except OSError:
        os.close(fd)
        return -1
    return fd
