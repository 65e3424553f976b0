"""End-to-end harness: real engines (podman, containerd/ctr, docker) driving pyouki and runc.

Each engine gets a private configuration and storage under one session temp dir; nothing in
/etc/containers, /var/lib/containers, /var/lib/docker or /run/containerd is used. The fixtures
live in :mod:`e2e.fixtures`; test modules load them with ``pytest_plugins``.
"""
