"""The error types pyouki raises; each carries one lowercase line for the user."""


class PyoukiError(Exception):
    """A failure to report to the caller as one line, then exit non-zero."""


class ConfigError(PyoukiError):
    """A config.json value that is missing or wrong, named by its JSON path."""

    def __init__(self, field: str, message: str) -> None:
        self.field = field
        super().__init__(f"{field}: {message}")


class ContainerError(PyoukiError):
    """A command that does not fit the container's state (missing, running, stopped...)."""
