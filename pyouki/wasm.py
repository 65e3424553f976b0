"""The wasm handler: run a WebAssembly module with wasmtime (WASI) instead of execve.

A config asks for it with the annotation `run.oci.handler: wasm` (youki's and crun's), or with
crun's `module.wasm.image/variant: compat` (always wasm) or `compat-smart` (wasm only when the
entrypoint is a module, so Linux and wasm containers can share a pod). `process.args[0]` names a
`.wasm` binary module or a `.wat` text module inside the container.

The three steps run in three places:
- `handler(config)`, in the caller of create before any fork: checks the annotations and imports
  wasmtime, with its native library (nothing can be imported after pivot_root). Without the
  annotations it returns None and imports nothing.
- `Handler.load(exe)`, in init after the whole set-up (pivot_root, user, capabilities, seccomp),
  before it reports ready: reads and compiles the module as the container's user, so a missing
  or corrupt module fails `create` like a missing executable, and `start` runs compiled code.
- `Handler.run(args, env)`, in init where it would execve: WASI args, env, stdio, the
  container's / preopened as / and process.cwd as `.`; exits with the module's status.
"""

from __future__ import annotations

import os

from pyouki.errors import ConfigError, PyoukiError, reason

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing
if TYPE_CHECKING:
    from types import ModuleType

HANDLER = "run.oci.handler"
VARIANT = "module.wasm.image/variant"
VARIANTS = ("compat", "compat-smart")
EXTRA_HINT = "install pyouki's wasm extra (pip install 'pyouki[wasm]')"
WASM_MAGIC = b"\0asm"
# a trap ends the process like wasmtime's own command does: as if killed by SIGABRT (128 + 6)
TRAP_STATUS = 134
# an error that is neither an exit nor a trap (e.g. proc_exit with a status of 126 or more)
ERROR_STATUS = 1
# above any fd number (close_range's upper bound is inclusive and unsigned)
MAX_FD = 2**31 - 1


def requested(config: dict) -> tuple[str, str] | None:
    """(annotation, value) of the wasm handler the config asks for, or None; unknown values are refused."""
    annotations = config.get("annotations")
    if not isinstance(annotations, dict):
        return None
    handler = annotations.get(HANDLER)
    variant = annotations.get(VARIANT)
    if handler is not None and handler != "wasm":
        raise ConfigError(f"annotations.{HANDLER}", f"unknown handler {handler!r} (pyouki knows \"wasm\")")
    if variant is not None and variant not in VARIANTS:
        raise ConfigError(f"annotations.{VARIANT}", f"unknown variant {variant!r} (pyouki knows "
                          f"{' and '.join(repr(v) for v in VARIANTS)})")
    if handler is not None:
        return HANDLER, handler
    if variant is not None:
        return VARIANT, variant
    return None


def available() -> bool:
    """True when wasmtime can be imported (checked without importing it)."""
    from importlib.util import find_spec

    return find_spec("wasmtime") is not None


def handler(config: dict) -> Handler | None:
    """The handler the config asks for, with wasmtime imported; None when it asks for none."""
    asked = requested(config)
    if asked is None:
        return None
    annotation, value = asked
    try:
        import wasmtime
    except ImportError:
        raise PyoukiError(f"annotations.{annotation}: {value!r} needs wasmtime, which is not installed: "
                          f"{EXTRA_HINT}") from None
    except (OSError, RuntimeError) as e:  # the native library did not load
        raise PyoukiError(f"annotations.{annotation}: failed to load wasmtime: {one_line(str(e))}") from None
    # `import wasmtime` loads _libwasmtime.so (wasmtime._ffi opens it at import) and every
    # submodule a run uses; make sure of it here, while the host's files are in reach
    from wasmtime import _ffi  # noqa: F401

    return Handler(wasmtime, smart=value == "compat-smart")


class Handler:
    """A wasm entrypoint for one container: compiled by `load`, run by `run`."""

    def __init__(self, wasmtime: ModuleType, smart: bool) -> None:
        self.wasmtime = wasmtime
        self.smart = smart
        self.path = ""
        self.engine = None
        self.pre = None

    def load(self, exe: str) -> Handler | None:
        """Read and compile the module at exe (resolved from process.args[0]); return self, or None
        when a compat-smart container's entrypoint is not a module (it is then executed as usual)."""
        wt = self.wasmtime
        try:
            with open(exe, "rb") as f:
                data = f.read()
        except OSError as e:
            raise PyoukiError(f"process.args[0]: failed to read {exe}: {reason(e)}") from None
        text = exe.endswith(".wat")
        if not text and not data.startswith(WASM_MAGIC):
            if self.smart:
                return None
            raise PyoukiError(f"process.args[0]: {exe} is not a WebAssembly module (no \\0asm header; "
                              "a text module needs the .wat suffix)")
        self.path = exe
        # one thread: compiling on a pool would leave idle threads in the waiting container
        config = wt.Config()
        config.parallel_compilation = False
        self.engine = wt.Engine(config)
        try:
            if text:
                data = wt.wat2wasm(data)
            module = wt.Module(self.engine, data)
        except wt.WasmtimeError as e:
            raise PyoukiError(f"process.args[0]: {exe} is not a valid WebAssembly module: {one_line(str(e))}") from None
        if "_start" not in {export.name for export in module.exports}:
            raise PyoukiError(f"process.args[0]: {exe} exports no _start function (not a WASI command)")
        linker = wt.Linker(self.engine)
        linker.define_wasi()
        try:
            # resolves the imports now: a module that needs more than WASI fails create
            self.pre = linker.instantiate_pre(module)
        except wt.WasmtimeError as e:
            raise PyoukiError(f"process.args[0]: {exe}: {one_line(str(e))}") from None
        return self

    def run(self, args: list[str], env: dict[str, str]) -> None:
        """Run the loaded module as the container process; never returns."""
        import _signal

        wt = self.wasmtime
        # what execve would do: close the fds marked close-on-exec (WASI cannot use the preserved
        # ones either; load opened none), and drop Python's SIGINT handler, which would only run
        # once the module is done
        os.closerange(3, MAX_FD)
        _signal.signal(_signal.SIGINT, _signal.SIG_DFL)
        wasi = wt.WasiConfig()
        wasi.argv = args
        wasi.env = list(env.items())
        wasi.inherit_stdin()
        wasi.inherit_stdout()
        wasi.inherit_stderr()
        wasi.preopen_dir("/", "/")  # fd 3: the container's root
        wasi.preopen_dir(".", ".")  # fd 4: process.cwd, for modules that resolve relative paths there
        store = wt.Store(self.engine)
        store.set_wasi(wasi)
        status = 0
        try:
            instance = self.pre.instantiate(store)  # type: ignore[attr-defined]
            instance.exports(store)["_start"](store)
        except wt.ExitTrap as e:
            status = e.code
        except wt.Trap as e:
            _tell(f"{self.path}: {one_line(str(e))}")
            status = TRAP_STATUS
        except wt.WasmtimeError as e:
            _tell(f"{self.path}: {one_line(str(e))}")
            status = ERROR_STATUS
        os._exit(status & 0xFF)


def _tell(message: str) -> None:
    try:
        os.write(2, f"pyouki: {message}\n".encode())
    except OSError:
        pass


def one_line(message: str) -> str:
    """wasmtime's multi-line error text as one line: the message, its causes (`Caused by:`) and the
    place of a text-format error; backtraces are left out."""
    head, _, causes = message.partition("\nCaused by:")
    lines = [ln.strip() for ln in head.strip().splitlines()]
    parts = []
    if lines and not lines[0].startswith("error while executing at wasm backtrace"):
        parts.append(lines[0].rstrip(":"))
        for ln in lines[1:]:
            if ln.startswith("--> "):  # a .wat parse error: `--> <anon>:LINE:COLUMN`
                place = ln.rsplit(":", 2)
                if len(place) == 3:
                    parts[-1] += f" at line {place[1]} column {place[2]}"
                break
    for ln in causes.splitlines():
        ln = ln.strip()
        if ln:
            # several causes are numbered `0: ...`
            number, sep, rest = ln.partition(": ")
            parts.append(rest if sep and number.isdigit() else ln)
    return ": ".join(parts) or "unknown error"
