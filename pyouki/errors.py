"""The error types pyouki raises; each carries one lowercase line for the user.

The CLI prints any of them as `pyouki: MESSAGE`; the Python API (pyouki.api) raises them as they
are, so a program can tell them apart by type (see docs/api.md).
"""


class PyoukiError(Exception):
    """A failure to report to the caller as one line, then exit non-zero."""


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
