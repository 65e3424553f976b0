"""pyouki: a rootless-first OCI container runtime."""

__version__ = "0.1.0"
OCI_VERSION = "1.3.0"
