"""`features`: the OCI runtime-spec Features structure (features.md, features-linux.md) for this
build, listing only what pyouki really implements; everything is read from the tables the code
itself uses (mount options, seccomp names, capabilities, namespaces, hook phases), so the list cannot drift.
"""

from __future__ import annotations

from pyouki import OCI_VERSION, __version__

OCI_VERSION_MIN = "1.0.0"


def _systemd_driver() -> bool:
    from importlib.util import find_spec

    # the systemd cgroup driver is a module of its own; until it exists, cgroupfs is all there is
    return find_spec("pyouki.cgroups.systemd") is not None


def features() -> dict:
    """The Features structure as a dict, ready for JSON."""
    from pyouki import idmapmount, procattrs, seccomp, wasm
    from pyouki.caps import CAPABILITIES
    from pyouki.config import NAMESPACE_TYPES
    from pyouki.hooks import PHASES
    from pyouki.mounts import FLAGS, PROPAGATION, RECURSIVE

    systemd = _systemd_driver()
    annotations = {
        "io.github.pyouki.version": __version__,
        "io.github.pyouki.checkpoint.enabled": "true",  # criu; the host kernel decides whether it can dump
        # applied, with no place of their own in the Features structure
        "io.github.pyouki.linux.personality.domains": ",".join(procattrs.PERSONALITY_DOMAINS),
        "io.github.pyouki.process.scheduler.policies": ",".join(procattrs.SCHED_POLICIES),
        "io.github.pyouki.process.scheduler.flags": ",".join(procattrs.SCHED_FLAGS),
        "io.github.pyouki.process.ioPriority.classes": ",".join(procattrs.IOPRIO_CLASSES),
    }
    if wasm.available():
        from importlib.metadata import PackageNotFoundError, version

        # the wasm handler, under the annotations that ask for it with the values pyouki accepts
        annotations.update({wasm.HANDLER: "wasm", wasm.VARIANT: ",".join(wasm.VARIANTS)})
        try:
            annotations["io.github.pyouki.wasm.wasmtime.version"] = version("wasmtime")
        except PackageNotFoundError:
            pass  # importable without its distribution's metadata (e.g. on PYTHONPATH)
    return {
        "ociVersionMin": OCI_VERSION_MIN,
        "ociVersionMax": OCI_VERSION,
        "hooks": list(PHASES),
        # tmpcopyup is accepted but not performed: not listed
        "mountOptions": sorted({*FLAGS, *PROPAGATION, *RECURSIVE, *idmapmount.OPTIONS}),
        "linux": {
            "namespaces": sorted(NAMESPACE_TYPES),
            "capabilities": list(CAPABILITIES),
            "cgroup": {"v1": True, "v2": True, "systemd": systemd, "systemdUser": systemd, "rdma": True},
            "seccomp": {
                "enabled": True,
                # SCMP_ACT_NOTIFY with listenerPath (pyouki.seccomp_notify)
                "actions": sorted(seccomp._ACTIONS),
                "operators": sorted(seccomp._OPERATORS),
                "archs": sorted(seccomp._ARCHES),
                "knownFlags": sorted({*seccomp._FLAGS, *seccomp._KERNEL_ONLY_FLAGS}),
                "supportedFlags": sorted({*seccomp._FLAGS, *seccomp._KERNEL_ONLY_FLAGS}),
            },
            "apparmor": {"enabled": True},  # supported by pyouki, whether or not this host runs it
            "selinux": {"enabled": True},
            "intelRdt": {"enabled": True, "schemata": True, "monitoring": True},
            "mountExtensions": {"idmap": {"enabled": True}},
            "netDevices": {"enabled": True},
            # the modes and flags pyouki recognizes (the kernel may lack some), as features-linux.md lists them
            "memoryPolicy": {"modes": list(procattrs.MPOL_MODES), "flags": sorted(procattrs.MPOL_FLAGS)},
        },
        "annotations": annotations,
        # the annotations that choose the wasm handler (refused when pyouki cannot honour them)
        "potentiallyUnsafeConfigAnnotations": [wasm.HANDLER, wasm.VARIANT],
    }
