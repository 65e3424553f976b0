"""A new network namespace: its loopback is up, as with runc."""

from __future__ import annotations

from harness import Bundle, Runner


def test_loopback_is_up_in_a_new_network_namespace(runner: Runner, bundle: Bundle) -> None:
    if not any(ns["type"] == "network" for ns in bundle.linux.get("namespaces", [])):
        bundle.add_namespace("network")  # spec --rootless has none; a user-owned one is fine
    # /proc/net reflects the process's own namespace (a rootless /sys is the host's, bound in)
    bundle.sh("ip link show lo | head -1; tail -n +3 /proc/net/dev | cut -d: -f1 | tr -d ' '")
    lines = runner.run(runner.new_id(), bundle).ok().stdout.splitlines()
    assert ",UP" in lines[0], lines[0]
    assert lines[1:] == ["lo"], "nothing but lo in the new namespace"
