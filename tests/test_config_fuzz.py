"""A schema-aware config fuzzer, through the real `create`.

Each case mutates a valid config (the runtime's own `spec`, plus a hook, a seccomp profile and a
cgroupsPath so those paths are reached): a value of a type the runtime-spec schema does not allow
at some path (present or not), a missing field, a huge or negative number, NUL bytes, unicode,
lone surrogates, very long strings, bad paths, a duplicated namespace, a broken seccomp profile,
or a file that is not JSON at all. `create` must then either succeed (the container is deleted
again) or fail with one error line of its own (not the CLI's last-resort "internal error");
never a traceback, never a hang, and nothing may be left behind: no state directory, process,
mount or cgroup.

The cases are random but reproducible: the seed is printed (and named in every failure);
PYOUKI_FUZZ_SEED=N replays a run, PYOUKI_FUZZ_CASES=N changes its size (default 150 a mode).
"""

from __future__ import annotations

import copy
import json
import os
import random
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from harness import MARK_VAR, Bundle, Runner, cgroup_leftovers, marked_pids, mounts_under

SCHEMA_DIR = Path(__file__).parent / "fixtures" / "runtime-spec-schema"
CASES = int(os.environ.get("PYOUKI_FUZZ_CASES") or 150)
SEED = int(os.environ.get("PYOUKI_FUZZ_SEED") or random.SystemRandom().randrange(2**32))
WORKERS = 3
TIMEOUT = 30.0  # a create that takes longer hangs
MISSING = object()
FUZZ_CGROUP = "pyouki-fuzz"  # the parent of the cases' cgroups

Path_ = tuple[Any, ...]


# --------------------------------------------------------------------------------------------
# the schema
# --------------------------------------------------------------------------------------------


class Schema:
    """The runtime-spec config schema, with $ref resolved across its files."""

    def __init__(self, directory: Path) -> None:
        self.docs = {p.name: json.loads(p.read_text()) for p in directory.glob("*.json")}

    def resolve(self, node: Any, doc: str) -> tuple[dict | None, str]:
        """Follow $ref (local or into another file); None when it leads outside what we have."""
        for _ in range(20):
            if not isinstance(node, dict) or "$ref" not in node:
                return (node if isinstance(node, dict) else None), doc
            target_file, _, fragment = node["$ref"].partition("#")
            doc = target_file or doc
            if doc not in self.docs:
                return None, doc
            node = self.docs[doc]
            for part in fragment.strip("/").split("/"):
                if part:
                    node = node[part]
        return None, doc

    def alternatives(self, node: dict, doc: str) -> list[tuple[dict, str]]:
        """node and what its oneOf/anyOf/allOf offer, resolved."""
        out = [(node, doc)]
        for key in ("oneOf", "anyOf", "allOf"):
            for alt in node.get(key) or []:
                resolved, alt_doc = self.resolve(alt, doc)
                if resolved is not None:
                    out.extend(self.alternatives(resolved, alt_doc))
        return out

    def types(self, node: dict, doc: str) -> set[str]:
        """The JSON types a value at node may have (empty: unknown, anything goes)."""
        out: set[str] = set()
        for alt, _ in self.alternatives(node, doc):
            t = alt.get("type")
            if isinstance(t, str):
                out.add(t)
            elif isinstance(t, list):
                out.update(t)
            if "enum" in alt:
                out.update(json_type(v) for v in alt["enum"])
        if "number" in out:
            out.add("integer")
        return out

    def paths(self, config: dict) -> list[tuple[Path_, set[str], bool]]:
        """(path, allowed types, present) for every path the schema names in config, and every
        property it allows but config lacks (under objects config has)."""
        out: list[tuple[Path_, set[str], bool]] = []
        root, doc = self.resolve(self.docs["config-schema.json"], "config-schema.json")
        assert root is not None
        self._walk(root, doc, config, (), out)
        return out

    def _walk(self, node: dict, doc: str, value: Any, path: Path_, out: list) -> None:
        out.append((path, self.types(node, doc), True))
        for alt, alt_doc in self.alternatives(node, doc):
            props = alt.get("properties") or {}
            if isinstance(value, dict):
                for name, sub in props.items():
                    resolved, sub_doc = self.resolve(sub, alt_doc)
                    if resolved is None:
                        continue
                    if name in value:
                        self._walk(resolved, sub_doc, value[name], path + (name,), out)
                    else:
                        out.append((path + (name,), self.types(resolved, sub_doc), False))
                extra = alt.get("additionalProperties")
                pattern = list((alt.get("patternProperties") or {}).values())
                sub = extra if isinstance(extra, dict) else (pattern[0] if pattern else None)
                if sub is not None:
                    resolved, sub_doc = self.resolve(sub, alt_doc)
                    for name in value:
                        if name not in props and resolved is not None:
                            self._walk(resolved, sub_doc, value[name], path + (name,), out)
            items = alt.get("items")
            if isinstance(value, list) and isinstance(items, dict):
                resolved, sub_doc = self.resolve(items, alt_doc)
                if resolved is not None:
                    for i, item in enumerate(value):
                        self._walk(resolved, sub_doc, item, path + (i,), out)


def json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


# --------------------------------------------------------------------------------------------
# mutations
# --------------------------------------------------------------------------------------------

SAMPLES: dict[str, list[Any]] = {
    "string": ["x", "", "/tmp"],
    "integer": [7, -1, 0],
    "number": [1.5, -0.5],
    "boolean": [True, False],
    "array": [[], [1, "x"], [{}]],
    "object": [{}, {"x": 1}],
    "null": [None],
}
NUMBERS = [2**63, 2**64, 2**63 - 1, -(2**63) - 1, -1, -(2**31), 2**31, 10**30, 1e308, -1e308, 0.5,
           float("nan"), float("inf"), float("-inf")]
STRINGS = ["", "\0", "a\0b", "é☃𝄞", "\u202eevil", "\ud800", "a\nb", "x" * 70000, " ", "-", "%s%n%x",
           "${HOME}", "relative/path", "/nonexistent/x", "../../..", "/", "//", "/./.././", "/tmp/../../.."]
BAD_SECCOMP: dict[Path_, list[Any]] = {
    ("linux", "seccomp", "defaultAction"): ["SCMP_ACT_NOPE", "", "SCMP_ACT_NOTIFY"],
    ("linux", "seccomp", "syscalls", 0, "names"): [["nosuchsyscall"], [], ["getpid", 5]],
    ("linux", "seccomp", "syscalls", 0, "action"): ["SCMP_ACT_NOPE", "SCMP_ACT_TRACE"],
    ("linux", "seccomp", "syscalls", 0, "errnoRet"): [2**40, -5],
    ("linux", "seccomp", "syscalls", 0, "args"): [[{"index": 99, "value": 1, "op": "SCMP_CMP_EQ"}],
                                                  [{"index": 0, "value": 1, "op": "SCMP_CMP_NOPE"}],
                                                  [{"index": 0, "value": -1, "op": "SCMP_CMP_EQ"}]],
    ("linux", "seccomp", "architectures"): [["SCMP_ARCH_NOPE"], "SCMP_ARCH_X86_64"],
    ("linux", "seccomp", "flags"): [["SECCOMP_FILTER_FLAG_NOPE"], ["SECCOMP_FILTER_FLAG_LOG"]],
    ("linux", "seccomp", "listenerPath"): ["/nonexistent/sock", "relative"],
}
NOT_JSON: list[bytes] = [b"", b"{", b'{"ociVersion": "1.0.2",', b"[]", b"null", b"42", b"\xff\xfe\x00{",
                         b"\xef\xbb\xbf{}", b"{} trailing", b"[" * 100000 + b"]" * 100000,
                         b'{"a":' * 5000 + b"1" + b"}" * 5000, b'{"process": {"args": ["\\ud800"]}}',
                         b"{'single': 'quotes'}", b'{"x": NaN}' + b" " * 10]


def get(config: Any, path: Path_) -> Any:
    for part in path:
        try:
            config = config[part]
        except (KeyError, IndexError, TypeError):
            return MISSING
    return config


def put(config: Any, path: Path_, value: Any) -> bool:
    parent = get(config, path[:-1])
    if isinstance(parent, dict) and isinstance(path[-1], str):
        parent[path[-1]] = value
        return True
    if isinstance(parent, list) and isinstance(path[-1], int) and path[-1] < len(parent):
        parent[path[-1]] = value
        return True
    return False


def remove(config: Any, path: Path_) -> bool:
    parent = get(config, path[:-1])
    try:
        del parent[path[-1]]
    except (KeyError, IndexError, TypeError):
        return False
    return True


def dotted(path: Path_) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else part)
    return out or "(top)"


def short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def safe_path(path: Path_) -> bool:
    """Mutations the host is safe from: the container keeps its own uts/ipc/net/pid namespaces
    (never thinned out, only broken: a broken list is refused as a whole)."""
    return not (len(path) >= 3 and path[:2] == ("linux", "namespaces"))


def mutate(rng: random.Random, config: dict, schema: Schema, cid: str) -> str:
    """Apply one random mutation to config in place; describe it."""
    paths = [p for p in schema.paths(config) if p[0] and safe_path(p[0])]
    kind = rng.choice(["type", "type", "type", "missing", "number", "string", "string", "namespace",
                       "seccomp", "absent"])
    if kind == "namespace":
        nss = get(config, ("linux", "namespaces"))
        if isinstance(nss, list) and nss:
            nss.append(copy.deepcopy(rng.choice(nss)))
            return f"duplicated namespace {nss[-1].get('type') if isinstance(nss[-1], dict) else nss[-1]!r}"
        kind = "type"
    if kind == "seccomp":
        path = rng.choice(list(BAD_SECCOMP))
        value = rng.choice(BAD_SECCOMP[path])
        if put(config, path, copy.deepcopy(value)):
            return f"seccomp {dotted(path)} = {short(value)}"
        kind = "type"
    if kind == "missing":
        present = [p for p, _, here in paths if here]
        path = rng.choice(present)
        if remove(config, path):
            return f"removed {dotted(path)}"
        kind = "type"
    if kind == "number":
        numeric = [p for p, types, here in paths if here and types & {"integer", "number"}]
        if numeric:
            path = rng.choice(numeric)
            value = rng.choice(NUMBERS)
            put(config, path, value)
            return f"{dotted(path)} = {short(value)}"
        kind = "type"
    if kind == "string":
        strings = [p for p, types, here in paths if here and "string" in types]
        if strings:
            path = rng.choice(strings)
            pool = STRINGS
            if path == ("linux", "cgroupsPath"):
                # cgroups the leftover check can find (named by the id; their parent stays, as /pyouki does)
                pool = [f"{FUZZ_CGROUP}/{cid}", f"/{FUZZ_CGROUP}/../{FUZZ_CGROUP}/{cid}", f"/{FUZZ_CGROUP}//{cid}/./",
                        f"/{FUZZ_CGROUP}/{cid}\0x", f"a:{cid}:b", f"/{FUZZ_CGROUP}/{cid}é"]
            value = rng.choice(pool)
            put(config, path, value)
            return f"{dotted(path)} = {short(value)}"
        kind = "type"
    if kind == "absent":
        absent = [(p, t) for p, t, here in paths if not here and t]
        if absent:
            path, types = rng.choice(absent)
            value = wrong_value(rng, types)
            put(config, path, value)
            return f"added {dotted(path)} = {short(value)}"
    path, types, _ = rng.choice([p for p in paths if p[1]])
    value = wrong_value(rng, types)
    if not put(config, path, value):
        return "unchanged"
    return f"{dotted(path)} = {short(value)} (wants {'/'.join(sorted(types))})"


def wrong_value(rng: random.Random, allowed: set[str]) -> Any:
    kinds = [k for k in SAMPLES if k not in allowed and not (k == "integer" and "number" in allowed)]
    return copy.deepcopy(rng.choice(SAMPLES[rng.choice(kinds)]))


def make_case(rng: random.Random, base: dict, schema: Schema, cid: str) -> tuple[bytes, str]:
    """The bytes of config.json for one case, and what was done to it."""
    if rng.random() < 0.06:
        text = rng.choice(NOT_JSON)
        return text, f"not JSON: {short(text[:40])}"
    config = copy.deepcopy(base)
    if get(config, ("linux", "cgroupsPath")) is not MISSING:
        config["linux"]["cgroupsPath"] = f"/{FUZZ_CGROUP}/{cid}"
    done = [mutate(rng, config, schema, cid) for _ in range(rng.choice((1, 1, 2, 3)))]
    return json.dumps(config).encode(), "; ".join(done)


# --------------------------------------------------------------------------------------------
# the test
# --------------------------------------------------------------------------------------------


def base_config(bundle: Bundle, rootless: bool) -> dict:
    config = copy.deepcopy(bundle.config)
    config["root"] = {"path": str(bundle.rootfs), "readonly": False}
    config["process"]["args"] = ["sleep", "1000"]
    config["process"]["rlimits"] = [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}]
    config["hooks"] = {"prestart": [{"path": "/bin/true", "args": ["true", "x"], "env": ["A=1"], "timeout": 10}]}
    linux = config.setdefault("linux", {})
    linux["seccomp"] = {"defaultAction": "SCMP_ACT_ALLOW",
                        "syscalls": [{"names": ["getpid"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1,
                                      "args": [{"index": 0, "value": 1, "op": "SCMP_CMP_EQ"}]}]}
    if not rootless:
        linux["cgroupsPath"] = "set per case"
        linux.setdefault("resources", {})["pids"] = {"limit": 100}
    linux["maskedPaths"] = list(linux.get("maskedPaths") or ["/proc/kcore"])
    return config


def run_case(runner: Runner, n: int, data: bytes, what: str, cid: str) -> str:
    """create one case through the CLI; "" or what went wrong."""
    label = f"case {n} (seed {SEED}, {what})"
    d = runner.workdir / f"case{n}"
    d.mkdir()
    (d / "config.json").write_bytes(data)
    if runner.owner:
        os.chown(d, *runner.owner)
        os.chown(d / "config.json", *runner.owner)
    mark = f"{runner.mark}-{n}"
    env = runner.env() | {MARK_VAR: mark}
    before = set(mounts_under([runner.workdir]))
    try:
        r = runner.cmd("create", "--bundle", str(d), cid, env=env, timeout=TIMEOUT)
    except AssertionError as e:
        return f"{label}: hang: {e}"
    problems = []
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    if "Traceback" in r.stderr or any(not ln.startswith("pyouki: ") for ln in lines):
        problems.append(f"not pyouki's error lines: {r.stderr[-1500:]!r}")
    if "pyouki: internal error: " in r.stderr:  # the CLI's last resort: an exception nobody expected
        problems.append(f"unexpected exception: {r.stderr[-1500:]!r}")
    if r.returncode != 0:
        if len(lines) != 1:
            problems.append(f"{len(lines)} error lines: {r.stderr[-1500:]!r}")
        elif lines[0][8:9].isupper() or lines[0].endswith("."):
            problems.append(f"error not lowercase without a period: {lines[0]!r}")
    else:
        st = runner.cmd("state", cid, env=env, timeout=TIMEOUT)
        if st.returncode != 0 or json.loads(st.stdout).get("status") != "created":
            problems.append(f"created, but state says: {st}")
        rd = runner.cmd("delete", "--force", cid, env=env, timeout=TIMEOUT)
        if rd.returncode != 0:
            problems.append(f"delete --force failed: {rd}")
    deadline = time.monotonic() + 3
    while marked_pids(mark) and time.monotonic() < deadline:
        time.sleep(0.02)
    if marked_pids(mark):
        problems.append(f"processes left: {marked_pids(mark)}")
    if (runner.state_root / cid).exists():
        problems.append(f"state left: {os.listdir(runner.state_root / cid)}")
    cgroups = cgroup_leftovers([cid])
    if cgroups:
        problems.append(f"cgroups left: {cgroups}")
    mounts = sorted(set(mounts_under([runner.workdir])) - before)
    if mounts:
        problems.append(f"mounts left: {mounts}")
    return f"{label}: rc={r.returncode}: " + "; ".join(problems) if problems else ""


def test_config_fuzz(runner: Runner, bundle: Bundle) -> None:
    print(f"config fuzz: seed {SEED} ({runner.mode}), {CASES} cases; replay with PYOUKI_FUZZ_SEED={SEED}")
    schema = Schema(SCHEMA_DIR)
    base = base_config(bundle, runner.rootless)
    tok = uuid.uuid4().hex[:8]
    rng = random.Random(f"{SEED}-{runner.mode}")
    cases = []
    for n in range(CASES):
        cid = f"fz-{tok}-{n}"  # not in runner.ids: its cleanup would run state and delete for each
        data, what = make_case(rng, base, schema, cid)
        cases.append((n, data, what, cid))
    started = time.monotonic()
    try:
        with ThreadPoolExecutor(max_workers=WORKERS) as pool:
            problems = [p for p in pool.map(lambda c: run_case(runner, *c), cases) if p]
    finally:
        for parent in cgroup_leftovers([FUZZ_CGROUP]):
            try:
                os.rmdir(parent)  # empty unless a case left a cgroup in it (reported below)
            except OSError:
                pass
    elapsed = time.monotonic() - started
    print(f"config fuzz: {CASES} cases in {elapsed:.1f} s")
    assert problems == [], f"seed {SEED}: {len(problems)} of {CASES} cases failed:\n" + "\n".join(problems[:30])
    assert runner.state_entries() == []
    assert runner.leftover_pids() == []
    assert cgroup_leftovers([tok]) == []


@pytest.mark.parametrize("n", range(3))
def test_mutations_are_schema_aware(n: int) -> None:
    """The fuzzer itself: a wrong-type mutation really breaks the type the schema asks for."""
    schema = Schema(SCHEMA_DIR)
    config = {"ociVersion": "1.0.2", "process": {"args": ["sh"], "cwd": "/", "user": {"uid": 0, "gid": 0}},
              "root": {"path": "rootfs"}, "linux": {"namespaces": [{"type": "mount"}]}}
    paths = {p: (types, here) for p, types, here in schema.paths(config)}
    assert paths[("process", "args")][0] == {"array"}
    assert "integer" in paths[("process", "user", "uid")][0]
    assert paths[("linux", "cgroupsPath")] == ({"string"}, False)
    assert paths[("linux", "namespaces", 0, "type")][0] == {"string"}
    rng = random.Random(n)
    for _ in range(50):
        value = wrong_value(rng, {"string"})
        assert not isinstance(value, str)
