"""Issue 9's acceptance: no config field is silently ignored.

Every property of the runtime-spec config schema (tests/fixtures/runtime-spec-schema/, copied from
runtime-spec's schema/) is either applied, listed in APPLIED with the test that shows it, or refused
with a one-line error naming its JSON path (REFUSED, checked by a real `create`). A property the
schema gains without an entry here fails test_every_schema_property_has_an_entry.

`features` is checked against the same tables: what it says pyouki does is what APPLIED lists.
"""

from __future__ import annotations

import ast
import copy
import json
import subprocess
from functools import cache
from pathlib import Path
from typing import Any

import pytest
from harness import Result, Runner, RuntimeInfo, assert_failed_cleanly

TESTS = Path(__file__).parent
SCHEMA_DIR = TESTS / "fixtures" / "runtime-spec-schema"

V1_WRITTEN = "test_cgroups_v1.py::test_every_supported_resource_is_written"
V1_REFUSED = "test_cgroups_v1.py::test_unsupported_or_invalid_field_is_named"
V1_WEIGHT_DEVICE = "test_cgroups_v1.py::test_per_device_weight_needs_bfq"
CHECK_BEFORE_UPDATE = "test_systemd_driver.py::test_check_before_update_goes_to_cgroupfs_with_the_limit"
RDT_GROUP = "test_intelrdt.py::test_without_closid_the_group_is_the_containers_and_goes_with_it"
HOOK_FIELDS = "test_hook_fields.py::test_env_and_timeout_in_every_phase"

# JSON path (array items as []) -> the test (file::function, under tests/) that shows it applied
# (or, for what this host lacks, refused by name, e.g. cgroup v1 controllers it does not mount)
APPLIED: dict[str, str] = {
    "ociVersion": "test_lifecycle.py::test_state_annotations",
    "hooks": "test_hooks.py::test_every_phase_runs_in_order_with_the_state",
    "hooks.prestart": HOOK_FIELDS,
    "hooks.prestart[].path": HOOK_FIELDS,
    "hooks.prestart[].args": HOOK_FIELDS,
    "hooks.prestart[].env": HOOK_FIELDS,
    "hooks.prestart[].timeout": HOOK_FIELDS,
    "hooks.createRuntime": HOOK_FIELDS,
    "hooks.createRuntime[].path": HOOK_FIELDS,
    "hooks.createRuntime[].args": HOOK_FIELDS,
    "hooks.createRuntime[].env": HOOK_FIELDS,
    "hooks.createRuntime[].timeout": HOOK_FIELDS,
    "hooks.createContainer": HOOK_FIELDS,
    "hooks.createContainer[].path": HOOK_FIELDS,
    "hooks.createContainer[].args": HOOK_FIELDS,
    "hooks.createContainer[].env": HOOK_FIELDS,
    "hooks.createContainer[].timeout": HOOK_FIELDS,
    "hooks.startContainer": HOOK_FIELDS,
    "hooks.startContainer[].path": HOOK_FIELDS,
    "hooks.startContainer[].args": HOOK_FIELDS,
    "hooks.startContainer[].env": HOOK_FIELDS,
    "hooks.startContainer[].timeout": HOOK_FIELDS,
    "hooks.poststart": HOOK_FIELDS,
    "hooks.poststart[].path": HOOK_FIELDS,
    "hooks.poststart[].args": HOOK_FIELDS,
    "hooks.poststart[].env": HOOK_FIELDS,
    "hooks.poststart[].timeout": HOOK_FIELDS,
    "hooks.poststop": HOOK_FIELDS,
    "hooks.poststop[].path": HOOK_FIELDS,
    "hooks.poststop[].args": HOOK_FIELDS,
    "hooks.poststop[].env": HOOK_FIELDS,
    "hooks.poststop[].timeout": HOOK_FIELDS,
    "annotations": "test_lifecycle.py::test_state_annotations",
    "hostname": "test_config_features.py::test_hostname",
    "domainname": "test_config_features.py::test_domainname",
    "mounts": "test_config_features.py::test_tmpfs_bind_and_ro_bind",
    "mounts[].source": "test_config_features.py::test_tmpfs_bind_and_ro_bind",
    "mounts[].destination": "test_config_features.py::test_tmpfs_bind_and_ro_bind",
    "mounts[].options": "test_config_features.py::test_tmpfs_bind_and_ro_bind",
    "mounts[].type": "test_config_features.py::test_tmpfs_bind_and_ro_bind",
    "mounts[].uidMappings": "test_idmap_mounts.py::test_per_mount_mapping_direction",
    "mounts[].uidMappings[].containerID": "test_idmap_mounts.py::test_per_mount_mapping_direction",
    "mounts[].uidMappings[].hostID": "test_idmap_mounts.py::test_per_mount_mapping_direction",
    "mounts[].uidMappings[].size": "test_idmap_mounts.py::test_per_mount_mapping_direction",
    "mounts[].gidMappings": "test_idmap_mounts.py::test_per_mount_mapping_direction",
    "mounts[].gidMappings[].containerID": "test_idmap_mounts.py::test_per_mount_mapping_direction",
    "mounts[].gidMappings[].hostID": "test_idmap_mounts.py::test_per_mount_mapping_direction",
    "mounts[].gidMappings[].size": "test_idmap_mounts.py::test_per_mount_mapping_direction",
    "root": "test_errors.py::test_missing_rootfs",
    "root.path": "test_errors.py::test_missing_rootfs",
    "root.readonly": "test_config_features.py::test_root_readonly",
    "process": "test_config_features.py::test_env_and_cwd",
    "process.args": "test_config_features.py::test_args0_resolved_in_container_path",
    "process.consoleSize": "test_terminal.py::test_console_socket_receives_a_working_pty",
    "process.consoleSize.height": "test_terminal.py::test_console_socket_receives_a_working_pty",
    "process.consoleSize.width": "test_terminal.py::test_console_socket_receives_a_working_pty",
    "process.cwd": "test_config_features.py::test_env_and_cwd",
    "process.env": "test_config_features.py::test_env_and_cwd",
    "process.terminal": "test_terminal.py::test_console_socket_receives_a_working_pty",
    "process.user": "test_config_features.py::test_process_user",
    "process.user.uid": "test_config_features.py::test_process_user",
    "process.user.gid": "test_config_features.py::test_process_user",
    "process.user.umask": "test_config_features.py::test_umask",
    "process.user.additionalGids": "test_config_features.py::test_process_user_additional_gids",
    "process.capabilities": "test_config_features.py::test_capabilities_all_five_sets",
    "process.capabilities.bounding": "test_config_features.py::test_capabilities_all_five_sets",
    "process.capabilities.permitted": "test_config_features.py::test_capabilities_all_five_sets",
    "process.capabilities.effective": "test_config_features.py::test_capabilities_all_five_sets",
    "process.capabilities.inheritable": "test_config_features.py::test_capabilities_all_five_sets",
    "process.capabilities.ambient": "test_config_features.py::test_capabilities_all_five_sets",
    "process.apparmorProfile": "test_lsm.py::test_apparmor_profile_refused_without_apparmor",
    "process.oomScoreAdj": "test_config_features.py::test_oom_score_adj",
    "process.selinuxLabel": "test_lsm.py::test_selinux_label_refused_without_selinux",
    "process.ioPriority": "test_procattrs.py::test_io_priority_realtime",
    "process.ioPriority.class": "test_procattrs.py::test_io_priority_realtime",
    "process.ioPriority.priority": "test_procattrs.py::test_io_priority_realtime",
    "process.noNewPrivileges": "test_config_features.py::test_no_new_privileges",
    "process.scheduler": "test_procattrs.py::test_scheduler_idle_seen_from_the_host",
    "process.scheduler.policy": "test_procattrs.py::test_scheduler_idle_seen_from_the_host",
    "process.scheduler.nice": "test_procattrs.py::test_scheduler_batch_with_nice",
    "process.scheduler.priority": "test_procattrs.py::test_exec_with_its_own_scheduler_and_io_priority",
    "process.scheduler.flags": "test_procattrs.py::test_scheduler_the_kernel_refuses",
    "process.scheduler.runtime": "test_procattrs.py::test_scheduler_deadline_and_start_hooks",
    "process.scheduler.deadline": "test_procattrs.py::test_scheduler_deadline_and_start_hooks",
    "process.scheduler.period": "test_procattrs.py::test_scheduler_deadline",
    "process.execCPUAffinity": "test_exec_parity.py::test_exec_cpu_affinity",  # exec's, not init's (config.md)
    "process.execCPUAffinity.initial": "test_exec_parity.py::test_exec_cpu_affinity",
    "process.execCPUAffinity.final": "test_exec_parity.py::test_exec_cpu_affinity",
    "process.rlimits": "test_config_features.py::test_rlimits",
    "process.rlimits[].hard": "test_config_features.py::test_rlimits",
    "process.rlimits[].soft": "test_config_features.py::test_rlimits",
    "process.rlimits[].type": "test_config_features.py::test_rlimits",
    "linux": "test_config_features.py::test_sysctl",
    "linux.devices": "test_config_features.py::test_linux_devices",
    "linux.devices[].type": "test_config_features.py::test_linux_devices",
    "linux.devices[].path": "test_rootfs_parity.py::test_device_path_with_trailing_slash",
    "linux.devices[].fileMode": "test_config_features.py::test_linux_devices",
    "linux.devices[].major": "test_config_features.py::test_linux_devices",
    "linux.devices[].minor": "test_config_features.py::test_linux_devices",
    "linux.devices[].uid": "test_config_features.py::test_linux_devices",
    "linux.devices[].gid": "test_config_features.py::test_linux_devices",
    "linux.netDevices": "test_netdev.py::test_devices_are_moved_renamed_with_their_addresses_and_up",
    "linux.uidMappings": "test_config_features.py::test_uid_gid_map",
    "linux.uidMappings[].containerID": "test_config_features.py::test_uid_gid_map",
    "linux.uidMappings[].hostID": "test_config_features.py::test_uid_gid_map",
    "linux.uidMappings[].size": "test_config_features.py::test_uid_gid_map",
    "linux.gidMappings": "test_config_features.py::test_uid_gid_map",
    "linux.gidMappings[].containerID": "test_config_features.py::test_uid_gid_map",
    "linux.gidMappings[].hostID": "test_config_features.py::test_uid_gid_map",
    "linux.gidMappings[].size": "test_config_features.py::test_uid_gid_map",
    "linux.namespaces": "test_inherited_namespaces.py::test_no_uts_namespace_is_the_hosts",
    "linux.namespaces[].type": "test_inherited_namespaces.py::test_no_uts_namespace_is_the_hosts",
    "linux.namespaces[].path": "test_config_features.py::test_join_named_netns",
    "linux.resources": "test_cgroup_parity.py::test_pids_limit_same_in_every_driver",
    "linux.resources.unified": "test_cgroups_v2.py::test_hugetlb_limits_and_unified_map",
    "linux.resources.devices": V1_WRITTEN,
    "linux.resources.devices[].allow": V1_WRITTEN,
    "linux.resources.devices[].type": V1_WRITTEN,
    "linux.resources.devices[].major": V1_WRITTEN,
    "linux.resources.devices[].minor": V1_WRITTEN,
    "linux.resources.devices[].access": V1_WRITTEN,
    "linux.resources.pids": V1_WRITTEN,
    "linux.resources.pids.limit": V1_WRITTEN,
    "linux.resources.blockIO": V1_WRITTEN,
    "linux.resources.blockIO.weight": V1_WRITTEN,
    "linux.resources.blockIO.leafWeight": "test_cgroups_v2.py::test_invalid_field_is_named",
    "linux.resources.blockIO.throttleReadBpsDevice": V1_WRITTEN,
    "linux.resources.blockIO.throttleReadBpsDevice[].major": V1_WRITTEN,
    "linux.resources.blockIO.throttleReadBpsDevice[].minor": V1_WRITTEN,
    "linux.resources.blockIO.throttleReadBpsDevice[].rate": V1_WRITTEN,
    "linux.resources.blockIO.throttleWriteBpsDevice": V1_WRITTEN,
    "linux.resources.blockIO.throttleWriteBpsDevice[].major": V1_WRITTEN,
    "linux.resources.blockIO.throttleWriteBpsDevice[].minor": V1_WRITTEN,
    "linux.resources.blockIO.throttleWriteBpsDevice[].rate": V1_WRITTEN,
    "linux.resources.blockIO.throttleReadIOPSDevice": V1_WRITTEN,
    "linux.resources.blockIO.throttleReadIOPSDevice[].major": V1_WRITTEN,
    "linux.resources.blockIO.throttleReadIOPSDevice[].minor": V1_WRITTEN,
    "linux.resources.blockIO.throttleReadIOPSDevice[].rate": V1_WRITTEN,
    "linux.resources.blockIO.throttleWriteIOPSDevice": V1_WRITTEN,
    "linux.resources.blockIO.throttleWriteIOPSDevice[].major": V1_WRITTEN,
    "linux.resources.blockIO.throttleWriteIOPSDevice[].minor": V1_WRITTEN,
    "linux.resources.blockIO.throttleWriteIOPSDevice[].rate": V1_WRITTEN,
    "linux.resources.blockIO.weightDevice": V1_WEIGHT_DEVICE,
    "linux.resources.blockIO.weightDevice[].major": V1_WEIGHT_DEVICE,
    "linux.resources.blockIO.weightDevice[].minor": V1_WEIGHT_DEVICE,
    "linux.resources.blockIO.weightDevice[].weight": V1_WEIGHT_DEVICE,
    "linux.resources.blockIO.weightDevice[].leafWeight": V1_REFUSED,
    "linux.resources.cpu": V1_WRITTEN,
    "linux.resources.cpu.cpus": V1_WRITTEN,
    "linux.resources.cpu.mems": V1_WRITTEN,
    "linux.resources.cpu.period": V1_WRITTEN,
    "linux.resources.cpu.quota": V1_WRITTEN,
    "linux.resources.cpu.burst": V1_WRITTEN,
    "linux.resources.cpu.realtimePeriod": V1_WRITTEN,
    "linux.resources.cpu.realtimeRuntime": V1_WRITTEN,
    "linux.resources.cpu.shares": V1_WRITTEN,
    "linux.resources.cpu.idle": V1_WRITTEN,
    "linux.resources.hugepageLimits": V1_WRITTEN,
    "linux.resources.hugepageLimits[].pageSize": "test_cgroups_v2.py::test_hugetlb_limits_and_unified_map",
    "linux.resources.hugepageLimits[].limit": V1_WRITTEN,
    "linux.resources.memory": V1_WRITTEN,
    "linux.resources.memory.kernel": V1_WRITTEN,
    "linux.resources.memory.kernelTCP": V1_WRITTEN,
    "linux.resources.memory.limit": V1_WRITTEN,
    "linux.resources.memory.reservation": V1_WRITTEN,
    "linux.resources.memory.swap": V1_WRITTEN,
    "linux.resources.memory.swappiness": V1_WRITTEN,
    "linux.resources.memory.disableOOMKiller": V1_WRITTEN,
    "linux.resources.memory.useHierarchy": V1_REFUSED,
    "linux.resources.memory.checkBeforeUpdate": CHECK_BEFORE_UPDATE,
    "linux.resources.network": V1_REFUSED,
    "linux.resources.network.classID": "test_cgroups_v2.py::test_invalid_field_is_named",
    "linux.resources.network.priorities": V1_REFUSED,
    "linux.resources.network.priorities[].name": V1_REFUSED,
    "linux.resources.network.priorities[].priority": V1_REFUSED,
    "linux.resources.rdma": "test_cgroups_v2.py::test_missing_controller_is_named",
    "linux.cgroupsPath": "test_cgroup_parity.py::test_pids_limit_same_in_every_driver",
    "linux.rootfsPropagation": "test_config_features.py::test_rootfs_propagation",
    "linux.seccomp": "test_config_features.py::test_seccomp_errno",
    "linux.seccomp.defaultAction": "test_seccomp.py::test_rules_equal_to_the_default_action_are_skipped",
    "linux.seccomp.defaultErrnoRet": "test_seccomp.py::test_default_action_with_default_errno_ret",
    "linux.seccomp.flags": "test_seccomp_notify.py::test_notify_config_errors",
    "linux.seccomp.listenerPath": "test_seccomp_notify.py::test_notify_config_errors",
    "linux.seccomp.listenerMetadata": "test_seccomp.py::test_validate_accepts_every_spec_value",
    "linux.seccomp.architectures": "test_config_features.py::test_seccomp_errno",
    "linux.seccomp.syscalls": "test_seccomp_enosys.py::test_in_a_container_newer_syscalls_get_enosys",
    "linux.seccomp.syscalls[].names": "test_config_features.py::test_seccomp_errno",
    "linux.seccomp.syscalls[].action": "test_seccomp.py::test_rules_equal_to_the_default_action_are_skipped",
    "linux.seccomp.syscalls[].errnoRet": "test_seccomp.py::test_errno_action_with_errno_ret",
    "linux.seccomp.syscalls[].args": "test_config_features.py::test_seccomp_argument_condition",
    "linux.seccomp.syscalls[].args[].index": "test_seccomp.py::test_same_index_conditions_become_separate_rules",
    "linux.seccomp.syscalls[].args[].value": "test_seccomp.py::test_validate_accepts_every_spec_value",
    "linux.seccomp.syscalls[].args[].valueTwo": "test_seccomp.py::test_conditions_on_distinct_arguments_are_anded",
    "linux.seccomp.syscalls[].args[].op": "test_config_features.py::test_seccomp_argument_condition",
    "linux.sysctl": "test_config_features.py::test_sysctl",
    "linux.maskedPaths": "test_config_features.py::test_masked_paths",
    "linux.readonlyPaths": "test_config_features.py::test_readonly_paths",
    "linux.mountLabel": "test_lsm.py::test_mount_label_refused_without_selinux",
    "linux.intelRdt": "test_intelrdt.py::test_create_without_resctrl_is_the_specs_error",
    "linux.intelRdt.closID": "test_intelrdt.py::test_a_closid_without_schemas_must_exist",
    "linux.intelRdt.schemata": RDT_GROUP,
    "linux.intelRdt.l3CacheSchema": RDT_GROUP,
    "linux.intelRdt.memBwSchema": RDT_GROUP,
    "linux.intelRdt.enableMonitoring": "test_intelrdt.py::test_a_failed_mon_group_undoes_the_group",
    "linux.memoryPolicy": "test_procattrs.py::test_memory_policy",
    "linux.memoryPolicy.mode": "test_procattrs.py::test_memory_policy",
    "linux.memoryPolicy.nodes": "test_procattrs.py::test_memory_policy_in_init_and_exec",
    "linux.memoryPolicy.flags": "test_procattrs.py::test_memory_policy_errors",
    "linux.personality": "test_procattrs.py::test_personality_linux_is_the_native_machine",
    "linux.personality.domain": "test_procattrs.py::test_personality_linux_is_the_native_machine",
    "linux.personality.flags": "test_procattrs.py::test_personality_errors",
    "linux.timeOffsets": "test_time_namespace.py::test_time_offsets_of_a_new_time_namespace",
    "linux.timeOffsets.boottime": "test_time_namespace.py::test_time_offsets_of_a_new_time_namespace",
    "linux.timeOffsets.boottime.secs": "test_time_namespace.py::test_time_offsets_of_a_new_time_namespace",
    "linux.timeOffsets.boottime.nanosecs": "test_time_namespace.py::test_time_offsets_of_a_new_time_namespace",
    "linux.timeOffsets.monotonic": "test_time_namespace.py::test_time_offsets_of_a_new_time_namespace",
    "linux.timeOffsets.monotonic.secs": "test_time_namespace.py::test_time_offsets_of_a_new_time_namespace",
    "linux.timeOffsets.monotonic.nanosecs": "test_time_namespace.py::test_time_offsets_of_a_new_time_namespace",
}

# the other platforms' sections: refused as a whole, the error naming the section
OTHER_PLATFORMS = ("freebsd", "solaris", "vm", "windows", "zos")
# JSON path -> the path the error names
REFUSED: dict[str, str] = {
    "process.commandLine": "process.commandLine",
    "process.user.username": "process.user.username",
}

# harness calls that set a property without spelling its name
ALIASES = {
    "args": ("set_args", ".sh("),
    "source": ("add_mount",),
    "destination": ("add_mount",),
    "type": ("add_mount", "add_namespace"),
    "options": ("add_mount",),
    "namespaces": ("add_namespace",),
    "path": ("add_namespace(",),
    "mounts": ("add_mount",),
    "linux": ("bundle.linux",),
    "process": ("bundle.process",),
    "resources": ("set_resources",),
    "seccomp": ("compile_filter(", "validate("),  # pyouki.seccomp's own entry points
    "intelRdt": ("Rdt.apply(",),  # pyouki.intelrdt's (resctrl is not mounted here: a stand-in directory)
}


@cache
def _doc(name: str) -> dict[str, Any]:
    return json.loads((SCHEMA_DIR / name).read_text())


def _resolve(node: dict[str, Any], doc: str) -> tuple[dict[str, Any], str]:
    while "$ref" in node:
        target, _, fragment = node["$ref"].partition("#")
        doc = target or doc
        node = _doc(doc)
        for part in fragment.strip("/").split("/"):
            if part:
                node = node[part]
    return node, doc


def _walk(node: dict[str, Any], doc: str, path: str, out: dict[str, dict[str, Any]]) -> None:
    node, doc = _resolve(node, doc)
    for key in ("allOf", "anyOf", "oneOf"):
        for sub in node.get(key, []):
            _walk(sub, doc, path, out)
    if isinstance(node.get("items"), dict):
        _walk(node["items"], doc, path + "[]", out)
    for name, sub in (node.get("properties") or {}).items():
        child = f"{path}.{name}" if path else name
        out[child] = _resolve(sub, doc)[0]
        _walk(sub, doc, child, out)


@cache
def schema_properties() -> dict[str, dict[str, Any]]:
    """Every property path of config-schema.json, with its (resolved) schema."""
    out: dict[str, dict[str, Any]] = {}
    _walk(_doc("config-schema.json"), "config-schema.json", "", out)
    return out


def _refused_field(path: str) -> str | None:
    top = path.split(".")[0]
    if top in OTHER_PLATFORMS:
        return top
    return REFUSED.get(path)


def test_schema_walk_finds_the_spec() -> None:
    props = schema_properties()
    assert len(props) > 250, "the walk follows $ref into config-linux.json and defs*.json"
    for known in ("process.args", "linux.resources.memory.limit", "mounts[].uidMappings[].hostID",
                  "linux.seccomp.syscalls[].args[].valueTwo", "hooks.poststop[].timeout"):
        assert known in props


def test_every_schema_property_has_an_entry() -> None:
    props = schema_properties()
    missing = [p for p in props if p not in APPLIED and _refused_field(p) is None]
    assert missing == [], f"schema properties neither applied (APPLIED) nor refused (REFUSED): {missing}"
    both = [p for p in APPLIED if _refused_field(p) is not None]
    assert both == [], f"listed as applied and refused: {both}"
    stale = [p for p in [*APPLIED, *REFUSED] if p not in props]
    assert stale == [], f"entries for properties the schema does not have: {stale}"


def _test_source(ref: str) -> str:
    """The test function's source with its decorators, the module's helpers it calls and the
    module-level constants they use."""
    file, _, name = ref.partition("::")
    src = (TESTS / file).read_text()
    tree = ast.parse(src)
    lines = src.splitlines()
    funcs = {n.name: n for n in tree.body if isinstance(n, ast.FunctionDef)}
    assert name in funcs, f"{ref}: no such test function"

    def segment(node: ast.FunctionDef) -> str:
        start = min([d.lineno for d in node.decorator_list] + [node.lineno])
        return "\n".join(lines[start - 1 : node.end_lineno])

    node = funcs[name]
    called = {c.func.id for c in ast.walk(node) if isinstance(c, ast.Call) and isinstance(c.func, ast.Name)}
    parts = [node] + [funcs[c] for c in sorted(called) if c in funcs]
    used = {n.id for part in parts for n in ast.walk(part) if isinstance(n, ast.Name)}
    constants = [ast.get_source_segment(src, a) or "" for a in tree.body if isinstance(a, ast.Assign)
                 and any(isinstance(t, ast.Name) and t.id in used for t in a.targets)]
    return "\n".join([segment(p) for p in parts] + constants)


@pytest.mark.parametrize("path", sorted(APPLIED))
def test_applied_property_has_its_test(path: str) -> None:
    ref = APPLIED[path]
    assert ref.split("::")[-1].startswith("test_"), ref
    src = _test_source(ref)
    names = [part.removesuffix("[]") for part in path.split(".")]
    leaf = names[-1]
    spelled = (f'"{leaf}"', f"'{leaf}'", *ALIASES.get(leaf, ()))
    assert any(s in src for s in spelled), f"{ref} does not set {path} ({leaf!r} nowhere in it)"
    # and names its parent somewhere (hooks.prestart[].env is not process.env)
    if len(names) > 1:
        parent = (names[-2], *ALIASES.get(names[-2], ()))
        assert any(s in src for s in parent), f"{ref} does not set {path} ({names[-2]!r} nowhere in it)"


def _sample(schema: dict[str, Any]) -> Any:
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = kind[0]
    return {"string": "x", "integer": 1, "number": 1, "boolean": True, "array": [], "object": {}}.get(kind, "x")


def _set(config: dict[str, Any], path: str) -> None:
    """Set the property at path (array items as one-element arrays) to a value of its type."""
    node: Any = config
    parts = path.split(".")
    for part in parts[:-1]:
        key = part.removesuffix("[]")
        if part.endswith("[]"):
            node = node.setdefault(key, [{}])[0]
        else:
            node = node.setdefault(key, {})
    last = parts[-1]
    value = _sample(schema_properties()[path])
    node[last.removesuffix("[]")] = [{}] if last.endswith("[]") else value


@pytest.fixture(scope="module")
def base_config(runtime: RuntimeInfo, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """`spec`'s config: refusals happen in validation, before anything reads the (empty) rootfs."""
    d = tmp_path_factory.mktemp("spec")
    subprocess.run([runtime.path, "spec", "--bundle", str(d)], check=True)
    return json.loads((d / "config.json").read_text())


@pytest.mark.parametrize("path", sorted(p for p in schema_properties() if _refused_field(p)))
def test_refused_property_is_named(runtime: RuntimeInfo, base_config: dict[str, Any], tmp_path: Path,
                                   path: str) -> None:
    if not runtime.is_pyouki:
        pytest.skip("runc 1.1.5 ignores these")
    config = copy.deepcopy(base_config)
    _set(config, path)
    (tmp_path / "rootfs").mkdir()
    (tmp_path / "config.json").write_text(json.dumps(config))
    state = tmp_path / "state"
    argv = [runtime.path, "--root", str(state), "create", "--bundle", str(tmp_path), "refused"]
    p = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert_failed_cleanly(runtime, Result(argv, p.returncode, p.stdout, p.stderr), f"{_refused_field(path)}: ")
    assert not state.exists() or not any(state.iterdir()), "nothing is left behind"


# what `features` announces -> the config path it is about: announced exactly when applied
FEATURE_FLAGS: dict[tuple[str, ...], str] = {
    ("linux", "seccomp", "enabled"): "linux.seccomp",
    ("linux", "apparmor", "enabled"): "process.apparmorProfile",
    ("linux", "selinux", "enabled"): "process.selinuxLabel",
    ("linux", "intelRdt", "enabled"): "linux.intelRdt",
    ("linux", "intelRdt", "schemata"): "linux.intelRdt.schemata",
    ("linux", "intelRdt", "monitoring"): "linux.intelRdt.enableMonitoring",
    ("linux", "mountExtensions", "idmap", "enabled"): "mounts[].uidMappings",
    ("linux", "netDevices", "enabled"): "linux.netDevices",
}


def _get(doc: dict[str, Any], keys: tuple[str, ...]) -> Any:
    for key in keys:
        doc = (doc or {}).get(key)  # type: ignore[assignment]
    return doc


def test_features_lists_exactly_what_is_applied(runtime: RuntimeInfo, runner: Runner) -> None:
    if not runtime.is_pyouki:
        pytest.skip("pyouki's own tables")
    doc = json.loads(runner.cmd("features", root=None).ok().stdout)
    for keys, path in FEATURE_FLAGS.items():
        assert bool(_get(doc, keys)) == (path in APPLIED), f"features {'.'.join(keys)} vs {path}"
    linux = doc["linux"]
    # every section features-linux.json defines is filled in
    schema = json.loads((SCHEMA_DIR / "features-linux.json").read_text())["linux"]["properties"]
    assert set(schema) <= set(linux), f"features lacks {set(schema) - set(linux)}"
    # hook phases: those the config schema has, all applied
    phases = {p.split(".")[1].removesuffix("[]") for p in schema_properties() if p.startswith("hooks.")}
    assert set(doc["hooks"]) == phases and all(f"hooks.{p}" in APPLIED for p in phases)
    # seccomp notify, memory policy and personality (runtime-spec 1.2/1.3) are announced, being applied
    assert "SCMP_ACT_NOTIFY" in linux["seccomp"]["actions"] and "linux.seccomp.listenerPath" in APPLIED
    assert linux["memoryPolicy"]["modes"] and "linux.memoryPolicy.mode" in APPLIED
    assert "io.github.pyouki.linux.personality.domains" in doc["annotations"] and "linux.personality" in APPLIED
    # the namespaces features lists are those linux.namespaces[].type may name, every one of them applied
    types = schema_properties()["linux.namespaces[].type"]
    assert sorted(linux["namespaces"]) == sorted(types["enum"])
    # nothing refused is announced: tmpcopyup (accepted, not performed) is left out of mountOptions
    assert "tmpcopyup" not in doc["mountOptions"]
