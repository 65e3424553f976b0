"""pyouki: a rootless-first OCI container runtime.

The Python API (docs/api.md): `pyouki.Runtime`, `pyouki.run` and the error types are loaded on
first use (a module `__getattr__`), so `import pyouki`, which every command's hot path does,
costs nothing more.
"""

__version__ = "0.1.0"
OCI_VERSION = "1.3.0"

_API = ("Runtime", "Container", "Process", "State", "run", "spec")
_ERRORS = ("PyoukiError", "ConfigError", "ContainerError", "ContainerNotFound", "ContainerExists",
           "ContainerNotRunning", "ContainerNotPaused", "ExitStatusUnknown")
__all__ = ["OCI_VERSION", "__version__", *_API, *_ERRORS]


def __getattr__(name: str) -> object:
    """The API's names, imported when first asked for."""
    if name in _API:
        from pyouki import api

        return getattr(api, name)
    if name in _ERRORS:
        from pyouki import errors

        return getattr(errors, name)
    raise AttributeError(f"module 'pyouki' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
