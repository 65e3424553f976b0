"""WebAssembly test modules, written here in the text format (WAT) against WASI preview 1.

Each function returns the source of one small WASI command (it exports `_start` and `memory`):
they print their arguments and environment, read a file through a preopened directory, sleep,
report whether stdout is a terminal, exit with a code, or trap. The runtime compiles `.wat`
files itself; `wasm_binary` makes a `.wasm` file with the test process's own wasmtime.
"""

from __future__ import annotations

_IMPORTS = """
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_read" (func $fd_read (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_fdstat_get" (func $fd_fdstat_get (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "args_sizes_get" (func $args_sizes_get (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "args_get" (func $args_get (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "environ_sizes_get" (func $environ_sizes_get (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "environ_get" (func $environ_get (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "path_open"
    (func $path_open (param i32 i32 i32 i32 i32 i64 i64 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "poll_oneoff" (func $poll_oneoff (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "proc_exit" (func $proc_exit (param i32)))
  (memory (export "memory") 2)
"""

# Memory layout: 0 iovec, 8 count written/read, 16 and 20 results, 24 "\n", 32 "--",
# 64.. string literals, 1024 pointer arrays, 4096 file buffer, 8192 argv/environ strings.
_HELPERS = """
  (data (i32.const 24) "\\n")
  (data (i32.const 32) "--\\00")
  (func $strlen (param $p i32) (result i32) (local $n i32)
    (block $done (loop $next
      (br_if $done (i32.eqz (i32.load8_u (i32.add (local.get $p) (local.get $n)))))
      (local.set $n (i32.add (local.get $n) (i32.const 1)))
      (br $next)))
    (local.get $n))
  (func $write (param $fd i32) (param $p i32) (param $len i32)
    (i32.store (i32.const 0) (local.get $p))
    (i32.store (i32.const 4) (local.get $len))
    (drop (call $fd_write (local.get $fd) (i32.const 0) (i32.const 1) (i32.const 8))))
  (func $puts (param $p i32)
    (call $write (i32.const 1) (local.get $p) (call $strlen (local.get $p)))
    (call $write (i32.const 1) (i32.const 24) (i32.const 1)))
  (func $print_pointers (param $count i32) (local $i i32)
    (block $done (loop $next
      (br_if $done (i32.ge_u (local.get $i) (local.get $count)))
      (call $puts (i32.load (i32.add (i32.const 1024) (i32.mul (local.get $i) (i32.const 4)))))
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br $next))))
"""


def _module(body: str) -> str:
    return f"(module{_IMPORTS}{_HELPERS}{body})\n"


def _literal(text: str) -> str:
    return "".join(c if c.isalnum() or c in "/._-" else f"\\{ord(c):02x}" for c in text)


def echo() -> str:
    """Prints each argument on a line, then `--`, then each environment entry on a line."""
    return _module("""
  (func (export "_start")
    (drop (call $args_sizes_get (i32.const 16) (i32.const 20)))
    (drop (call $args_get (i32.const 1024) (i32.const 8192)))
    (call $print_pointers (i32.load (i32.const 16)))
    (call $puts (i32.const 32))
    (drop (call $environ_sizes_get (i32.const 16) (i32.const 20)))
    (drop (call $environ_get (i32.const 1024) (i32.const 8192)))
    (call $print_pointers (i32.load (i32.const 16))))
""")


def cat(dirfd: int, path: str) -> str:
    """Opens `path` relative to the preopened directory `dirfd` (3 is /, 4 is process.cwd) and copies
    up to 4 KiB of it to stdout; exits 10 when the open fails."""
    return _module(f"""
  (data (i32.const 64) "{_literal(path)}")
  (func (export "_start")
    ;; dirflags: follow symlinks; rights: FD_READ
    (if (call $path_open (i32.const {dirfd}) (i32.const 1) (i32.const 64) (i32.const {len(path.encode())})
                         (i32.const 0) (i64.const 2) (i64.const 0) (i32.const 0) (i32.const 16))
      (then (call $proc_exit (i32.const 10))))
    (i32.store (i32.const 0) (i32.const 4096))
    (i32.store (i32.const 4) (i32.const 4096))
    (drop (call $fd_read (i32.load (i32.const 16)) (i32.const 0) (i32.const 1) (i32.const 8)))
    (call $write (i32.const 1) (i32.const 4096) (i32.load (i32.const 8))))
""")


def exit_with(code: int) -> str:
    """Writes `exiting` and calls proc_exit(code)."""
    return _module(f"""
  (data (i32.const 64) "exiting\\00")
  (func (export "_start")
    (call $puts (i32.const 64))
    (call $proc_exit (i32.const {code})))
""")


def trap() -> str:
    """Writes `before-trap` and executes `unreachable`."""
    return _module("""
  (data (i32.const 64) "before-trap\\00")
  (func (export "_start")
    (call $puts (i32.const 64))
    unreachable)
""")


def sleep_then_print(seconds: int) -> str:
    """Writes `sleeping`, waits `seconds` on the monotonic clock (poll_oneoff), writes `woke`."""
    return _module(f"""
  (data (i32.const 64) "sleeping\\00")
  (data (i32.const 80) "woke\\00")
  (func (export "_start")
    (call $puts (i32.const 64)){_sleep(seconds * 1_000_000_000)}
    (call $puts (i32.const 80)))
""")


def _sleep(nanoseconds: int) -> str:
    """Instructions: wait on the monotonic clock with one poll_oneoff subscription at 4096 (userdata 0,
    tag 0 = clock, clock id 1 = monotonic, the timeout, precision 0, flags 0)."""
    return f"""
    (i32.store8 (i32.const 4104) (i32.const 0))
    (i32.store (i32.const 4112) (i32.const 1))
    (i64.store (i32.const 4120) (i64.const {nanoseconds}))
    (i64.store (i32.const 4128) (i64.const 0))
    (i32.store16 (i32.const 4136) (i32.const 0))
    (drop (call $poll_oneoff (i32.const 4096) (i32.const 6144) (i32.const 1) (i32.const 16)))"""


def stdout_kind(linger_ms: int = 0) -> str:
    """Writes `tty` when stdout is a character device (a terminal), else `not-a-tty`; then waits
    linger_ms (conmon may drop the output of a terminal that closes at once)."""
    return _module(f"""
  (data (i32.const 64) "tty\\00")
  (data (i32.const 80) "not-a-tty\\00")
  (func (export "_start")
    (drop (call $fd_fdstat_get (i32.const 1) (i32.const 4096)))
    ;; filetype 2: character device
    (if (i32.eq (i32.load8_u (i32.const 4096)) (i32.const 2))
      (then (call $puts (i32.const 64)))
      (else (call $puts (i32.const 80)))){_sleep(linger_ms * 1_000_000)})
""")


def wasm_binary(wat: str) -> bytes:
    """The binary form of a text module (with the test process's wasmtime)."""
    import wasmtime

    return bytes(wasmtime.wat2wasm(wat))
