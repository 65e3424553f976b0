"""The error types pyouki raises; each carries one lowercase line for the user.

The CLI prints any of them as `pyouki: MESSAGE`; the Python API (pyouki.api) raises them as they
are, so a program can tell them apart by type (see docs/api.md).

The line is what callers see; the exception it came from stays attached (`raise ... from None`
only hides it from the default traceback: it is still `__context__`), so `errno` and `--debug`
can reach it.
"""


class PyoukiError(Exception):
    """A failure to report to the caller as one line, then exit non-zero.

    errno: the errno of the OSError behind it (given, or found in the chain of causes), else None.
    """

    def __init__(self, message: str, *, errno: int | None = None) -> None:
        super().__init__(message)
        self._errno = errno

    @property
    def errno(self) -> int | None:
        if self._errno is not None:
            return self._errno
        cause = self.cause
        while cause is not None:
            if isinstance(cause, OSError) and cause.errno is not None:
                return int(cause.errno)
            cause = cause.__cause__ or cause.__context__
        return None

    @property
    def cause(self) -> BaseException | None:
        """The exception this one was raised from or while handling, if any."""
        return self.__cause__ or self.__context__


class ConfigError(PyoukiError):
    """A config.json value that is missing or wrong, named by its JSON path."""

    def __init__(self, field: str, message: str) -> None:
        self.field = field
        self.message = message
        super().__init__(f"{field}: {message}")

    @property
    def path(self) -> str:
        """The JSON path of the field (`mounts[2].options`), as the message starts with it."""
        return self.field


class ContainerError(PyoukiError):
    """A command that does not fit the container's state (missing, running, stopped...)."""


class ContainerNotFound(ContainerError):
    """No container with that id under the state root (runc's "container does not exist")."""


class ContainerExists(ContainerError):
    """create with an id already in use."""


class ContainerNotRunning(ContainerError):
    """A verb that needs a live container (kill, pause, update, events, exec) on a stopped one."""


class ContainerNotPaused(ContainerError):
    """resume of a container that is not frozen."""


class ExitStatusUnknown(ContainerError):
    """wait() on a process whose exit status this process cannot learn (see docs/api.md)."""


def reason(e: OSError) -> str:
    """The lowercase reason of an OSError, as pyouki's messages put it ("permission denied")."""
    return (e.strerror or str(e) or type(e).__name__).lower()


def describe(e: BaseException) -> str:
    """One lowercase line for any exception: pyouki's own message, an OSError's reason and
    file, or (a bug) the exception's type and text."""
    if isinstance(e, PyoukiError):
        return str(e)
    if isinstance(e, OSError):
        where = f": {e.filename}" if e.filename is not None else ""
        return f"{reason(e)}{where}"
    if isinstance(e, RecursionError):
        return "internal error: nested too deeply (recursion limit)"
    if isinstance(e, MemoryError):
        return "internal error: out of memory"
    text = " ".join(str(e).split()).rstrip(".")
    return f"internal error: {type(e).__name__}" + (f": {text}" if text else "")
