"""pyouki's minimal D-Bus client for systemd, built on jeepney.

- ``address``: where the system/user buses and systemd's private sockets are; the host uid.
- ``properties``: unit properties as typed ``a(sv)``; ``resources``: OCI linux.resources to them.
- ``messages``: sans-I/O construction of the calls (StartTransientUnit, StopUnit, ...).
- ``connection``: a blocking unix-socket connection with a timeout on every step.
- ``systemd``: ``SystemdManager``, transient scopes and property reads.

Nothing is imported here: jeepney is loaded only when a message is built or a bus is used.
"""
