#!/usr/bin/env python3
"""Offline checks of fleetcmd's deploy files, run by deploy/validate.sh in its cached venv.

Subcommands (each prints `ok`/`FAIL` lines and exits 1 on any failure):
  config-keys REPO                      the config keys, parsed from cluster/config.rs
  dockerfile REPO                       the Dockerfile's build step, runtime user, entrypoint
  context REPO [DEST]                   the build context after .dockerignore (copied to DEST)
  compose REPO COMPOSE.json             the resolved compose model (`docker-compose config`)
  k8s REPO NAME RENDERED.yaml GATEWAY.json KUBE_VERSIONS
                                        schemas (kubernetes-validate, strict) and consistency
                                        of one rendered kustomization; Gateway API objects are
                                        written to GATEWAY.json for the node validator
  policy FILE...                        policy files, with the rules of Policy::validate
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
import shutil
import sys
import tomllib
from pathlib import Path

FAILURES: list[str] = []


def fail(msg: str) -> None:
    FAILURES.append(msg)
    print(f"FAIL {msg}")


def ok(msg: str) -> None:
    print(f"ok   {msg}")


def check(cond: bool, msg: str) -> bool:
    (ok if cond else fail)(msg)
    return cond


def finish() -> None:
    sys.exit(1 if FAILURES else 0)


# The build command CI and the image share (deploy/Dockerfile; `deploy/validate.sh --build`).
BUILD_COMMAND = "cargo build --release -p fleetcmd --features cluster --locked"
RUNTIME_UID = 10001
SERVICES = ("registry", "dispatcher", "edge", "projector")
# FLEETCMD_* variables read by clap rather than the cluster config.
CLI_ENV = {"FLEETCMD_CONFIG", "FLEETCMD_ENDPOINT", "FLEETCMD_TOKEN"}
# Engines each service connects to (services/fleetcmd/src/cluster/mod.rs).
ENGINES = {
    "registry": {"nats", "scylla"},
    "dispatcher": {"nats", "kafka", "scylla"},
    "edge": {"nats", "mqtt"},
    "projector": {"nats", "kafka", "scylla"},
}
METRICS_PORT = 9464
API_SERVICES = {"registry": "fleetcmd.v1.CommandRegistry", "dispatcher": "fleetcmd.v1.CommandDispatcher"}


# ------------------------------------------------------------------------------ config keys
def config_keys(repo: Path) -> dict[str, str]:
    """`section.key` (or `key`) -> Rust type, from the serde structs of cluster/config.rs."""
    src = (repo / "services/fleetcmd/src/cluster/config.rs").read_text()
    structs: dict[str, list[tuple[str, str]]] = {}
    for m in re.finditer(r"pub struct (\w+) \{(.*?)\n\}", src, re.S):
        fields = re.findall(r"^\s*pub (\w+): ([\w:<>]+),", m.group(2), re.M)
        structs[m.group(1)] = fields
    if "ClusterConfig" not in structs:
        raise SystemExit("cannot find `pub struct ClusterConfig` in cluster/config.rs")
    keys: dict[str, str] = {}
    for name, ty in structs["ClusterConfig"]:
        if ty in structs:
            for sub, subty in structs[ty]:
                keys[f"{name}.{sub}"] = subty
        else:
            keys[name] = ty
    return keys


def env_name(key: str) -> str:
    return "FLEETCMD_" + key.replace(".", "_").upper()


def check_value(where: str, key: str, ty: str, value, from_env: bool) -> None:
    """Checks one config value against the Rust type of its key, as config::load parses it."""
    def bad(why: str) -> None:
        fail(f"{where}: {key} = {value!r}: {why}")

    if ty in ("u16", "u32", "u64"):
        if from_env:
            if not re.fullmatch(r"\d+", str(value)):
                return bad("expected an unsigned integer")
            value = int(value)
        elif not isinstance(value, int) or isinstance(value, bool):
            return bad("expected an integer")
        limit = {"u16": 65535, "u32": 2**32 - 1, "u64": 2**64 - 1}[ty]
        if not 0 <= value <= limit:
            return bad(f"out of range for {ty}")
    elif ty == "bool":
        if from_env and str(value) not in ("true", "false"):
            return bad("expected true or false")
        if not from_env and not isinstance(value, bool):
            return bad("expected a boolean")
    elif ty == "SocketAddr":
        if not re.fullmatch(r"(\d{1,3}(\.\d{1,3}){3}|\[[0-9a-fA-F:]+\]):\d{1,5}", str(value)):
            return bad("expected IP:PORT (an address literal, not a host name)")
    elif ty.startswith("Vec<"):
        if not from_env and not isinstance(value, list):
            return bad("expected a list")
    elif not from_env and not isinstance(value, str):
        return bad("expected a string")


def check_env_vars(where: str, env: dict[str, str], keys: dict[str, str]) -> None:
    known = {env_name(k): k for k in keys}
    for name, value in env.items():
        if not name.startswith("FLEETCMD_") or name in CLI_ENV:
            continue
        if name not in known:
            fail(f"{where}: {name} is not a config key (see `fleetcmd run registry --dump-config`)")
            continue
        if value is None:
            continue  # set from the downward API; checked by the caller
        check_value(where, known[name], keys[known[name]], value, from_env=True)


def check_toml_config(where: str, text: str, keys: dict[str, str]) -> dict:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        fail(f"{where}: not TOML: {e}")
        return {}
    flat: dict = {}
    for k, v in data.items():
        if isinstance(v, dict):
            for sk, sv in v.items():
                flat[f"{k}.{sk}"] = sv
        else:
            flat[k] = v
    before = len(FAILURES)
    for key, value in flat.items():
        if key not in keys:
            fail(f"{where}: unknown config key {key}")
        else:
            check_value(where, key, keys[key], value, from_env=False)
    if len(FAILURES) == before:
        ok(f"{where}: {len(flat)} keys, all known to config.rs and well typed")
    return flat


def check_effective(where: str, cfg: dict) -> None:
    """The checks of ClusterConfig::validate that do not need the defaults."""
    shards = int(cfg["shards"]) if "shards" in cfg else 64
    if not 1 <= shards <= 1024:
        fail(f"{where}: shards = {shards} is not within 1..=1024")
    if "scylla.keyspace" in cfg and not re.fullmatch(r"\w+", str(cfg["scylla.keyspace"]), re.A):
        fail(f"{where}: scylla.keyspace must be letters, digits and underscores")
    if "retention_secs" in cfg and int(cfg["retention_secs"]) < 60:
        fail(f"{where}: retention_secs must be at least 60")
    if "mqtt.instances" in cfg and "mqtt.instance" in cfg and cfg["mqtt.instance"] is not None:
        n, i = int(cfg["mqtt.instances"]), int(cfg["mqtt.instance"])
        if not 0 <= i < n:
            fail(f"{where}: mqtt.instance {i} must be below mqtt.instances {n}")


# ------------------------------------------------------------------------------ policy
POLICY_ACTIONS = {
    "CreateCommand", "GetCommand", "ListCommands", "UpdateCommand", "DeleteCommand",
    "GetCommandExecution", "ListCommandExecutions", "DeleteCommandExecution",
    "WatchCommandExecutions", "StartCommandExecution", "CancelCommandExecution",
}


def policy_actions(repo: Path) -> set[str]:
    """The action names of crates/domain/src/policy.rs (falls back to the list above)."""
    try:
        src = (repo / "crates/domain/src/policy.rs").read_text()
        names = set(re.findall(r'Self::\w+ => "(\w+)"', src))
        return names or POLICY_ACTIONS
    except OSError:
        return POLICY_ACTIONS


def check_policy(where: str, text: str, actions: set[str]) -> list[str]:
    """The rules of Policy::validate; returns the tokens."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        fail(f"{where}: policy is not TOML: {e}")
        return []
    before = len(FAILURES)
    extra = set(data) - {"tokens"}
    if extra:
        fail(f"{where}: unknown top-level keys {sorted(extra)}")
    tokens = data.get("tokens") or []
    if not tokens:
        fail(f"{where}: a policy must list at least one token")
    seen = []
    for i, t in enumerate(tokens):
        at = f"{where}: tokens[{i}]"
        if set(t) - {"name", "token", "allow"}:
            fail(f"{at}: unknown keys {sorted(set(t) - {'name', 'token', 'allow'})}")
        if not str(t.get("name", "")).strip():
            fail(f"{at}.name must not be empty")
        tok = str(t.get("token", ""))
        if len(tok) < 16 or not all("\x21" <= c <= "\x7e" for c in tok):
            fail(f"{at}.token must be at least 16 printable ASCII characters without spaces")
        if tok in seen:
            fail(f"{at}.token is used twice")
        seen.append(tok)
        for j, g in enumerate(t.get("allow") or []):
            if set(g) - {"actions", "commands", "targets"}:
                fail(f"{at}.allow[{j}]: unknown keys")
            acts = g.get("actions") or []
            if not acts:
                fail(f"{at}.allow[{j}].actions must list at least one action")
            for a in acts:
                if a != "*" and a not in actions:
                    fail(f"{at}.allow[{j}]: unknown action {a!r}")
            for p in g.get("targets", ["*"]):
                if p != "*" and not (p.startswith("thing/") or p.startswith("client/")):
                    fail(f"{at}.allow[{j}]: target pattern {p!r} must start with thing/ or client/")
    if len(FAILURES) == before:
        ok(f"{where}: policy with {len(tokens)} token(s) follows the rules of Policy::validate")
    return seen


# ------------------------------------------------------------------------------ Dockerfile
def dockerfile_instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    out, cur = [], ""
    for line in text.splitlines():
        s = line.strip()
        if not cur and (not s or s.startswith("#")):
            continue
        if cur and s.startswith("#"):
            continue
        if s.endswith("\\"):
            cur += s[:-1] + " "
            continue
        cur += s
        ins, _, args = cur.partition(" ")
        out.append((ins.upper(), re.sub(r"\s+", " ", args).strip()))
        cur = ""
    return out


def cmd_dockerfile(repo: Path) -> None:
    path = repo / "deploy/Dockerfile"
    ins = dockerfile_instructions(path.read_text())
    stages = [a for i, a in ins if i == "FROM"]
    check(len(stages) >= 2, f"Dockerfile: multi-stage ({len(stages)} stages)")
    runs = [a for i, a in ins if i == "RUN"]
    builds = [r for r in runs if "cargo build" in r]
    check(len(builds) == 1 and BUILD_COMMAND in builds[0],
          f"Dockerfile: the one cargo build step runs `{BUILD_COMMAND}`")
    check(bool(builds) and all(f"--mount=type=cache,target={t}" in builds[0] for t in
                               ("/usr/local/cargo/registry", "/src/target")),
          "Dockerfile: the build step caches the cargo registry and target/ (BuildKit cache mounts)")
    last = max(k for k, (i, _) in enumerate(ins) if i == "FROM")
    final = ins[last:]
    users = [a for i, a in final if i == "USER"]
    check(bool(users) and users[-1].split(":")[0] == str(RUNTIME_UID),
          f"Dockerfile: the runtime stage runs as uid {RUNTIME_UID}")
    check(any(i == "COPY" and a.endswith("/usr/local/bin/fleetcmd") for i, a in final),
          "Dockerfile: the binary lands at /usr/local/bin/fleetcmd")
    check(('ENTRYPOINT', '["fleetcmd"]') in final, 'Dockerfile: ENTRYPOINT ["fleetcmd"]')
    exposed = {p for i, a in final if i == "EXPOSE" for p in a.split()}
    check({"50051", "50052", "50061"} <= exposed, f"Dockerfile: EXPOSE {sorted(exposed)}")
    # The feature the build enables must exist (cargo would refuse the build otherwise).
    manifest = tomllib.loads((repo / "services/fleetcmd/Cargo.toml").read_text())
    check("cluster" in manifest.get("features", {}),
          "services/fleetcmd/Cargo.toml defines the `cluster` feature the image is built with")
    main = (repo / "services/fleetcmd/src/main.rs").read_text()
    check(re.search(r"\bRun\(", main) is not None,
          "services/fleetcmd/src/main.rs has the `run` subcommand the compose and k8s services use")
    check(re.search(r"\bBench\(", main) is not None,
          "services/fleetcmd/src/main.rs has the `bench` subcommand the compose loadgen uses")


# ------------------------------------------------------------------------------ build context
def dockerignore_patterns(repo: Path) -> list[tuple[bool, re.Pattern, str]]:
    pats = []
    for line in (repo / ".dockerignore").read_text().splitlines():
        s = line.strip()
        if not s or s.startswith("#"):
            continue
        neg = s.startswith("!")
        s = os.path.normpath(s[1:] if neg else s).lstrip("/")
        rx, i = "", 0
        while i < len(s):
            if s.startswith("**/", i):
                rx, i = rx + "(?:.*/)?", i + 3
            elif s.startswith("**", i):
                rx, i = rx + ".*", i + 2
            elif s[i] == "*":
                rx, i = rx + "[^/]*", i + 1
            elif s[i] == "?":
                rx, i = rx + "[^/]", i + 1
            else:
                rx, i = rx + re.escape(s[i]), i + 1
        pats.append((neg, re.compile(rx + r"\Z"), s))
    return pats


def ignored(rel: str, pats) -> bool:
    """Docker's rule: the last pattern matching the path or one of its parents decides."""
    parts = rel.split("/")
    prefixes = ["/".join(parts[: k + 1]) for k in range(len(parts))]
    result = False
    for neg, rx, _ in pats:
        if any(rx.match(p) for p in prefixes):
            result = not neg
    return result


def context_files(repo: Path) -> list[str]:
    pats = dockerignore_patterns(repo)
    files = []
    for root, dirs, names in os.walk(repo):
        rel_root = os.path.relpath(root, repo)
        rel_root = "" if rel_root == "." else rel_root + "/"
        # Prune ignored directories, unless a `!` pattern reaches into them.
        dirs[:] = [d for d in dirs if not ignored(rel_root + d, pats)
                   or any(neg and src.startswith(rel_root + d + "/") for neg, _, src in pats)]
        for n in names:
            rel = rel_root + n
            if not ignored(rel, pats):
                files.append(rel)
    return sorted(files)


def cmd_context(repo: Path, dest: str | None) -> None:
    files = context_files(repo)
    fileset = set(files)
    check(all(f in fileset for f in ("Cargo.toml", "Cargo.lock")), "context: Cargo.toml and Cargo.lock are in")
    members = tomllib.loads((repo / "Cargo.toml").read_text())["workspace"]["members"]
    missing = [m for m in members if f"{m}/Cargo.toml" not in fileset
               or not any(f.startswith(f"{m}/src/") for f in files)]
    check(not missing, f"context: every workspace member ({len(members)}) has its Cargo.toml and src/"
          + (f" (missing: {missing})" if missing else ""))
    protos = [p.relative_to(repo).as_posix() for p in (repo / "proto").rglob("*.proto")]
    check(bool(protos) and all(p in fileset for p in protos), f"context: proto/ is in ({len(protos)} files)")
    bad = [f for f in files if f.startswith(("target/", ".git/", ".engines/")) or "/target/" in f]
    check(not bad, "context: no target/, .git/ or .engines/" + (f" (found {bad[:3]})" if bad else ""))
    size = sum((repo / f).stat().st_size for f in files)
    ok(f"context: {len(files)} files, {size / 1e6:.1f} MB")
    if dest:
        d = Path(dest)
        if d.exists():
            shutil.rmtree(d)
        for f in files:
            (d / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(repo / f, d / f)
        ok(f"context: copied to {d}")


# ------------------------------------------------------------------------------ compose
def host_of(value: str) -> str:
    v = re.sub(r"^\w+://", "", value)
    return v.rsplit(":", 1)[0] if ":" in v else v


def cmd_compose(repo: Path, model_path: str) -> None:
    keys = config_keys(repo)
    actions = policy_actions(repo)
    model = json.loads(Path(model_path).read_text())
    services = model["services"]
    fleet = {n: s for n, s in services.items() if (s.get("command") or [None])[0] == "run"}
    kinds = {n: s["command"][1] for n, s in fleet.items()}
    count = {k: list(kinds.values()).count(k) for k in SERVICES}
    check(count == {"registry": 1, "dispatcher": 2, "edge": 2, "projector": 1},
          f"compose: fleetcmd services {count} (registry, two dispatchers, two edges, projector)")
    for n in ("nats", "kafka", "scylla", "mosquitto", "loadgen"):
        check(n in services, f"compose: service {n} exists")

    images = {s.get("image") for s in fleet.values()} | {services.get("loadgen", {}).get("image")}
    check(len(images) == 1, f"compose: every fleetcmd service and the loadgen run one image {images}")
    for n, s in fleet.items():
        b = s.get("build") or {}
        if not (b.get("dockerfile") == "deploy/Dockerfile" and Path(b.get("context", "")).resolve() == repo.resolve()):
            fail(f"compose: {n} builds deploy/Dockerfile from the repository root")
    ok("compose: fleetcmd services build deploy/Dockerfile from the repository root")

    engine_service = {"nats": "nats", "kafka": "kafka", "scylla": "scylla", "mqtt": "mosquitto"}
    for e, n in engine_service.items():
        hc = services.get(n, {}).get("healthcheck") or {}
        check(bool(hc.get("test")) and not hc.get("disable"), f"compose: engine {n} has a health check")

    shared = {}
    policy_tokens: list[str] = []
    edges = []
    for n, s in sorted(fleet.items()):
        kind = kinds[n]
        env = s.get("environment") or {}
        where = f"compose {n}"
        before = len(FAILURES)
        check_env_vars(where, env, keys)
        cfg = {keys_k: env[env_name(keys_k)] for keys_k in keys if env_name(keys_k) in env}
        check_effective(where, cfg)
        # one value per deployment
        for k in ("shards", "topic_root", "nats.url", "kafka.brokers", "kafka.topic", "scylla.nodes",
                  "scylla.keyspace", "mqtt.host", "mqtt.port"):
            if k in cfg:
                shared.setdefault(k, set()).add(cfg[k])
        # engines: started healthy first, and named by existing services
        deps = s.get("depends_on") or {}
        for e in ENGINES[kind]:
            d = deps.get(engine_service[e], {})
            if d.get("condition") != "service_healthy":
                fail(f"{where}: depends on {engine_service[e]} with condition service_healthy")
        hosts = {"nats": [cfg.get("nats.url")], "kafka": str(cfg.get("kafka.brokers", "")).split(","),
                 "scylla": str(cfg.get("scylla.nodes", "")).split(","), "mqtt": [cfg.get("mqtt.host")]}
        for e in ENGINES[kind]:
            for h in hosts[e]:
                if not h or host_of(h.strip()) not in services:
                    fail(f"{where}: {e} address {h!r} is not a compose service")
        if kind in API_SERVICES:
            addr = cfg.get("grpc.addr", "")
            if not addr.startswith("127."):
                pol = cfg.get("auth.policy")
                if not pol and cfg.get("auth.allow_unauthenticated") != "true":
                    fail(f"{where}: a non-loopback API needs auth.policy (or allow_unauthenticated)")
                mounts = [v for v in s.get("volumes", []) if v.get("target") == pol]
                if pol and not mounts:
                    fail(f"{where}: the policy {pol} is not mounted")
                for m in mounts:
                    src = Path(m["source"])
                    if not src.is_file():
                        fail(f"{where}: policy source {src} does not exist")
                    else:
                        policy_tokens = check_policy(f"compose {src.relative_to(repo)}", src.read_text(), actions)
        else:
            check("health.addr" in cfg and not cfg["health.addr"].startswith("127."),
                  f"{where}: health.addr is reachable from outside the container")
        if kind == "edge":
            edges.append((n, cfg))
        if len(FAILURES) == before:
            ok(f"{where}: `run {kind}`, {sum(1 for k in env if k.startswith('FLEETCMD_'))} FLEETCMD_* variables valid, engines {sorted(ENGINES[kind])} healthy first")
    for k, vals in shared.items():
        check(len(vals) == 1, f"compose: {k} is the same in every fleetcmd service ({sorted(map(str, vals))})")
    ids = [c.get("mqtt.client_id") for _, c in edges]
    check(len(set(ids)) == len(ids) and None not in ids, f"compose: edges have distinct mqtt.client_id {ids}")
    ns = {c.get("mqtt.instances") for _, c in edges}
    idx = sorted(int(c.get("mqtt.instance", -1)) for _, c in edges)
    check(ns == {str(len(edges))} and idx == list(range(len(edges))),
          f"compose: edges split device updates as instances {idx} of {ns}")

    # engines' own settings
    kenv = services["kafka"].get("environment") or {}
    check(kenv.get("KAFKA_AUTO_CREATE_TOPICS_ENABLE") == "false", "compose: kafka topic auto-creation is off")
    check("broker" in kenv.get("KAFKA_PROCESS_ROLES", "") and "controller" in kenv.get("KAFKA_PROCESS_ROLES", ""),
          "compose: kafka is a single KRaft node (broker,controller)")
    cid = kenv.get("CLUSTER_ID", "")
    check(re.fullmatch(r"[A-Za-z0-9_-]{22}", cid) is not None, "compose: kafka CLUSTER_ID is a base64url UUID")
    scmd = " ".join(services["scylla"].get("command") or [])
    for flag in ("--smp 1", "--memory 1G", "--overprovisioned 1", "--developer-mode 1"):
        check(flag in scmd, f"compose: scylla runs with {flag}")
    ncmd = services["nats"].get("command") or []
    check("-js" in ncmd or "--jetstream" in ncmd, "compose: nats has JetStream on")
    mconf = [v for v in services["mosquitto"].get("volumes", []) if v.get("target") == "/mosquitto/config/mosquitto.conf"]
    if check(len(mconf) == 1 and Path(mconf[0]["source"]).is_file(), "compose: mosquitto config is mounted"):
        lines = [l.split("#")[0].split() for l in Path(mconf[0]["source"]).read_text().splitlines()]
        check(["set_tcp_nodelay", "true"] in lines, "compose: mosquitto has set_tcp_nodelay true")
        check(any(l[:2] == ["listener", "1883"] for l in lines), "compose: mosquitto listens on 1883")
    # gateway routes
    gw = services.get("gateway")
    if check(gw is not None, "compose: gateway (gRPC router) exists"):
        conf = [v for v in gw.get("volumes", []) if v.get("target") == "/etc/nginx/nginx.conf"]
        if check(len(conf) == 1 and Path(conf[0]["source"]).is_file(), "compose: gateway config is mounted"):
            text = Path(conf[0]["source"]).read_text()
            upstreams = dict(re.findall(r"upstream (\w+) \{(.*?)\}", text, re.S))
            for name, body in upstreams.items():
                for host, port in re.findall(r"server ([\w.-]+):(\d+);", body):
                    svc = services.get(host)
                    good = svc is not None and (svc.get("environment") or {}).get("FLEETCMD_GRPC_ADDR", "").endswith(":" + port)
                    check(good, f"compose: gateway upstream {name} -> {host}:{port} is a fleetcmd API")
            for kind, svc_name in API_SERVICES.items():
                m = re.search(r"location /" + re.escape(svc_name) + r"/ \{\s*grpc_pass grpc://(\w+);", text)
                targets = re.findall(r"server ([\w.-]+):", upstreams.get(m.group(1), "")) if m else []
                check(bool(targets) and all(kinds.get(t) == kind for t in targets),
                      f"compose: gateway routes /{svc_name}/ to the {kind} services {targets}")
    # load generator
    lg = services.get("loadgen", {})
    script = " ".join((lg.get("entrypoint") or []) + (lg.get("command") or []))
    lenv = lg.get("environment") or {}
    check("fleetcmd bench" in script and "--json" in script, "compose: loadgen runs `fleetcmd bench ... --json`")
    m = re.search(r"--mqtt ([\w.-]+):(\d+)", script)
    check(bool(m) and m.group(1) == "mosquitto" and m.group(2) == "1883", "compose: loadgen's devices use mosquitto:1883")
    ep = lenv.get("FLEETCMD_ENDPOINT", "")
    check(host_of(ep) == "gateway" and ep.endswith(":8080"), f"compose: loadgen calls both APIs through the gateway ({ep})")
    check(lenv.get("FLEETCMD_TOKEN") in policy_tokens, "compose: loadgen's token is in the policy")
    check(lg.get("restart") in (None, "no"), "compose: loadgen runs once")
    # published ports
    published = {str(p.get("published")) for s in services.values() for p in s.get("ports") or []}
    check({"50050", "50051", "50052", "1883"} <= published, f"compose: published ports {sorted(published)}")
    finish()


# ------------------------------------------------------------------------------ Kubernetes
def containers_of(obj: dict) -> list[dict]:
    return obj["spec"]["template"]["spec"].get("containers", [])


def selector_matches(sel: dict, labels: dict) -> bool:
    for k, v in (sel.get("matchLabels") or {}).items():
        if labels.get(k) != v:
            return False
    for e in sel.get("matchExpressions") or []:
        val = labels.get(e["key"])
        op = e["operator"]
        if op == "In" and val not in e["values"]:
            return False
        if op == "NotIn" and val in e["values"]:
            return False
        if op == "Exists" and e["key"] not in labels:
            return False
        if op == "DoesNotExist" and e["key"] in labels:
            return False
    return True


def cmd_k8s(repo: Path, name: str, rendered: str, gateway_out: str, versions: str) -> None:
    import yaml
    import kubernetes_validate
    from kubernetes_validate.utils import SchemaNotFoundError

    keys = config_keys(repo)
    actions = policy_actions(repo)
    docs = [d for d in yaml.safe_load_all(Path(rendered).read_text()) if d]
    where = f"k8s {name}"
    check(bool(docs), f"{where}: renders {len(docs)} objects")

    # 1. schemas
    gateway_objects = []
    for v in versions.split(","):
        before = len(FAILURES)
        n = 0
        for d in docs:
            ident = f"{d.get('kind')}/{d.get('metadata', {}).get('name')}"
            if d.get("apiVersion", "").startswith("gateway.networking.k8s.io/"):
                if v == versions.split(",")[0]:
                    gateway_objects.append({"source": where, "object": d})
                continue
            try:
                kubernetes_validate.validate(d, v, strict=True)
                n += 1
            except SchemaNotFoundError as e:
                fail(f"{where}: {ident}: {e.message}")
            except Exception as e:  # ValidationError and friends
                path = ".".join(str(p) for p in getattr(e, "path", []))
                fail(f"{where}: {ident} against Kubernetes {v} (strict): {path}: {getattr(e, 'message', e)}")
        if len(FAILURES) == before:
            ok(f"{where}: {n} objects valid against the Kubernetes {v} schemas (strict: no unknown fields)")
    Path(gateway_out).write_text(json.dumps(gateway_objects))

    by_kind: dict[str, list[dict]] = {}
    for d in docs:
        by_kind.setdefault(d["kind"], []).append(d)

    def named(kind: str, n: str) -> dict | None:
        return next((o for o in by_kind.get(kind, []) if o["metadata"]["name"] == n), None)

    workloads = by_kind.get("Deployment", []) + by_kind.get("StatefulSet", [])
    configmaps = {o["metadata"]["name"]: o for o in by_kind.get("ConfigMap", [])}
    secrets = {o["metadata"]["name"]: o for o in by_kind.get("Secret", [])}
    services = {o["metadata"]["name"]: o for o in by_kind.get("Service", [])}

    # 2. namespace: all namespaced objects in one, when the overlay sets it
    nss = {d["metadata"].get("namespace") for d in docs if d["kind"] != "Namespace"}
    if name != "base":
        check(len(nss) == 1 and None not in nss and any(n["metadata"]["name"] in nss for n in by_kind.get("Namespace", [])),
              f"{where}: every object is in the overlay's namespace {sorted(map(str, nss))}, which it creates")

    # 3. images: what the overlay's kustomization.yaml asks for
    kfile = repo / "k8s/overlays" / name / "kustomization.yaml"
    if kfile.is_file():
        want = set()
        for im in yaml.safe_load(kfile.read_text()).get("images") or []:
            ref = im.get("newName", im["name"])
            want.add(f"{ref}@{im['digest']}" if im.get("digest") else f"{ref}:{im.get('newTag', 'latest')}")
        got = {c["image"] for w in by_kind.get("Deployment", []) + by_kind.get("StatefulSet", []) for c in containers_of(w)}
        check(bool(want) and got == want, f"{where}: every container runs the overlay's image {sorted(got)}")

    # 4. workloads
    kinds_seen = {}
    for w in workloads:
        wn = f"{where}: {w['kind']}/{w['metadata']['name']}"
        spec = w["spec"]["template"]["spec"]
        labels = w["spec"]["template"]["metadata"].get("labels", {})
        before = len(FAILURES)
        check(selector_matches(w["spec"]["selector"], labels), f"{wn}: selector matches its pod labels") or None
        if labels.get("app.kubernetes.io/part-of") != "fleetcmd":
            fail(f"{wn}: pod label app.kubernetes.io/part-of=fleetcmd (NetworkPolicies select on it)")
        psc = spec.get("securityContext", {})
        if spec.get("automountServiceAccountToken") is not False:
            fail(f"{wn}: automountServiceAccountToken: false")
        if psc.get("runAsUser") != RUNTIME_UID or not psc.get("runAsNonRoot"):
            fail(f"{wn}: pod runs as non-root uid {RUNTIME_UID} (the image's user)")
        if (psc.get("seccompProfile") or {}).get("type") != "RuntimeDefault":
            fail(f"{wn}: seccompProfile RuntimeDefault")
        volumes = {v["name"]: v for v in spec.get("volumes", [])}
        for c in containers_of(w):
            cn = f"{wn} container {c['name']}"
            sc = c.get("securityContext", {})
            if not (sc.get("readOnlyRootFilesystem") and sc.get("allowPrivilegeEscalation") is False
                    and "ALL" in (sc.get("capabilities") or {}).get("drop", [])):
                fail(f"{cn}: read-only root filesystem, no privilege escalation, capabilities dropped")
            res = c.get("resources", {})
            for part in ("requests", "limits"):
                for r in ("cpu", "memory"):
                    if r not in (res.get(part) or {}):
                        fail(f"{cn}: resources.{part}.{r} is set")
            args = c.get("args") or []
            kind = args[1] if len(args) >= 2 and args[0] == "run" else None
            if kind not in SERVICES:
                fail(f"{cn}: args are `run <service>` ({args})")
                continue
            kinds_seen.setdefault(kind, []).append(w)
            ports = {p.get("name"): p["containerPort"] for p in c.get("ports", [])}
            for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
                p = c.get(probe)
                if not p:
                    fail(f"{cn}: {probe} is set")
                    continue
                port = (p.get("grpc") or p.get("tcpSocket") or {}).get("port")
                if port not in ports.values() and port not in ports:
                    fail(f"{cn}: {probe} probes a declared container port ({port})")
            if "grpc" not in (c.get("readinessProbe") or {}):
                fail(f"{cn}: readiness is the gRPC health check")
            # environment: known keys, $(VAR) references defined earlier
            env = {}
            defined = set()
            for e in c.get("env", []):
                val = e.get("value")
                for ref in re.findall(r"\$\((\w+)\)", val or ""):
                    if ref not in defined:
                        fail(f"{cn}: env {e['name']} refers to $({ref}) before it is defined")
                defined.add(e["name"])
                env[e["name"]] = None if "valueFrom" in e else (val if not re.search(r"\$\(", val or "") else None)
            check_env_vars(cn, {k: v for k, v in env.items()}, keys)
            # the config file: FLEETCMD_CONFIG under a mounted ConfigMap holding it
            cfg: dict = {}
            cpath = env.get("FLEETCMD_CONFIG")
            if not cpath:
                fail(f"{cn}: FLEETCMD_CONFIG is set")
            else:
                for m in c.get("volumeMounts", []):
                    if cpath.startswith(m["mountPath"].rstrip("/") + "/"):
                        vol = volumes.get(m["name"], {})
                        cm = configmaps.get((vol.get("configMap") or {}).get("name"))
                        fname = cpath[len(m["mountPath"].rstrip("/")) + 1:]
                        if cm is None or fname not in cm.get("data", {}):
                            fail(f"{cn}: {cpath} comes from a ConfigMap of this kustomization")
                        else:
                            cfg = check_toml_config(f"{where}: ConfigMap/{cm['metadata']['name']}:{fname} (as read by {c['name']})",
                                                    cm["data"][fname], keys)
                        break
                else:
                    fail(f"{cn}: {cpath} is on a mounted volume")
            eff = dict(cfg)
            for k in keys:
                if env.get(env_name(k)) is not None:
                    eff[k] = env[env_name(k)]
                elif env_name(k) in env:
                    eff[k] = None
            check_effective(cn, {k: v for k, v in eff.items() if v is not None or k == "mqtt.instance"})
            # API services: address, port, policy
            if kind in API_SERVICES:
                addr = str(eff.get("grpc.addr", ""))
                port = int(addr.rsplit(":", 1)[1]) if ":" in addr else None
                if port not in ports.values():
                    fail(f"{cn}: grpc.addr {addr} is a declared container port")
                if addr.startswith("127."):
                    fail(f"{cn}: grpc.addr {addr} is reachable from outside the pod")
                pol = eff.get("auth.policy")
                if not pol:
                    fail(f"{cn}: auth.policy is set (a non-loopback API needs a policy)")
                else:
                    for m in c.get("volumeMounts", []):
                        if pol.startswith(m["mountPath"].rstrip("/") + "/"):
                            sname = (volumes.get(m["name"], {}).get("secret") or {}).get("secretName")
                            if not sname:
                                fail(f"{cn}: the policy {pol} comes from a Secret")
                            elif sname in secrets:
                                key = pol[len(m["mountPath"].rstrip("/")) + 1:]
                                data = secrets[sname].get("stringData", {})
                                if key not in data:
                                    fail(f"{cn}: Secret {sname} has the key {key}")
                            else:
                                ok(f"{cn}: policy Secret {sname} is created out of band (not in this kustomization)")
                            break
                    else:
                        fail(f"{cn}: the policy {pol} is on a mounted volume")
            else:
                addr = str(eff.get("health.addr", ""))
                if addr.startswith("127.") or (int(addr.rsplit(":", 1)[1]) if ":" in addr else None) not in ports.values():
                    fail(f"{cn}: health.addr {addr} is a declared, reachable container port")
            # Prometheus scrapes every pod: metrics.addr is a declared port, reachable from outside.
            maddr = str(eff.get("metrics.addr", ""))
            mport = int(maddr.rsplit(":", 1)[1]) if ":" in maddr else None
            if maddr.startswith("127.") or mport not in ports.values():
                fail(f"{cn}: metrics.addr {maddr or '(default 127.0.0.1:9464)'} is a declared, reachable container port")
            # engines named by Services of this kustomization (ExternalName) or by FQDN
            hosts = {"nats": [eff.get("nats.url")], "kafka": str(eff.get("kafka.brokers", "")).split(","),
                     "scylla": list(eff.get("scylla.nodes") or []) if isinstance(eff.get("scylla.nodes"), list)
                     else str(eff.get("scylla.nodes", "")).split(","), "mqtt": [eff.get("mqtt.host")]}
            for e in ENGINES[kind]:
                for h in hosts[e]:
                    h = host_of(str(h).strip()) if h else ""
                    if not (h in services or "." in h):
                        fail(f"{cn}: the {e} host {h!r} is neither a Service here nor a DNS name")
            if kind == "edge":
                if w["kind"] != "StatefulSet":
                    fail(f"{wn}: the edge is a StatefulSet (stable client id and instance index)")
                envs = {e["name"]: e for e in c.get("env", [])}
                inst = envs.get("FLEETCMD_MQTT_INSTANCE", {})
                src = ((inst.get("valueFrom") or {}).get("fieldRef") or {}).get("fieldPath", "")
                if src != "metadata.labels['apps.kubernetes.io/pod-index']":
                    fail(f"{cn}: mqtt.instance comes from the pod-index label")
                n_inst = (envs.get("FLEETCMD_MQTT_INSTANCES") or {}).get("value")
                if str(w["spec"].get("replicas", 1)) != str(n_inst):
                    fail(f"{cn}: replicas ({w['spec'].get('replicas', 1)}) = FLEETCMD_MQTT_INSTANCES ({n_inst})")
                cid = (envs.get("FLEETCMD_MQTT_CLIENT_ID") or {}).get("value", "")
                if "$(POD_NAME)" not in cid:
                    fail(f"{cn}: mqtt.client_id is derived from the pod name")
                svc = services.get(w["spec"].get("serviceName"))
                if not svc or svc["spec"].get("clusterIP") != "None":
                    fail(f"{wn}: serviceName is a headless Service")
        if len(FAILURES) == before:
            ok(f"{wn}: security context, resources, probes, config, engines" )
    check(sorted(kinds_seen) == sorted(SERVICES), f"{where}: one workload per service {sorted(kinds_seen)}")

    # 5. services select pods and name real ports
    for s in services.values():
        if s["spec"].get("type") == "ExternalName":
            continue
        sel = s["spec"].get("selector") or {}
        pods = [w for w in workloads if selector_matches({"matchLabels": sel}, w["spec"]["template"]["metadata"].get("labels", {}))]
        names = {p.get("name") for w in pods for c in containers_of(w) for p in c.get("ports", [])} | \
                {p["containerPort"] for w in pods for c in containers_of(w) for p in c.get("ports", [])}
        good = bool(pods) and all(p.get("targetPort", p["port"]) in names for p in s["spec"]["ports"])
        check(good, f"{where}: Service/{s['metadata']['name']} selects {[w['metadata']['name'] for w in pods]} on declared ports")

    # 6. HPA, PDB, NetworkPolicy
    for h in by_kind.get("HorizontalPodAutoscaler", []):
        t = h["spec"]["scaleTargetRef"]
        target = named(t["kind"], t["name"])
        check(target is not None and "replicas" not in target["spec"],
              f"{where}: HPA/{h['metadata']['name']} scales {t['kind']}/{t['name']}, which leaves replicas to it")
        check(h["spec"].get("minReplicas", 1) <= h["spec"]["maxReplicas"], f"{where}: HPA/{h['metadata']['name']} min <= max")
    hpa_targets = {h["spec"]["scaleTargetRef"]["name"] for h in by_kind.get("HorizontalPodAutoscaler", [])}
    for comp in ("registry", "dispatcher"):
        check(any(w["metadata"]["name"] in hpa_targets for w in kinds_seen.get(comp, [])), f"{where}: {comp} has an HPA")
    for w in workloads:
        labels = w["spec"]["template"]["metadata"].get("labels", {})
        pdbs = [p for p in by_kind.get("PodDisruptionBudget", []) if selector_matches(p["spec"]["selector"], labels)]
        check(len(pdbs) == 1, f"{where}: {w['kind']}/{w['metadata']['name']} has one PodDisruptionBudget")
    nps = by_kind.get("NetworkPolicy", [])
    deny = [p for p in nps if not p["spec"].get("ingress") and not p["spec"].get("egress")
            and set(p["spec"].get("policyTypes", [])) == {"Ingress", "Egress"}]
    check(bool(deny) and all(any(selector_matches(p["spec"]["podSelector"], w["spec"]["template"]["metadata"]["labels"]) for p in deny) for w in workloads),
          f"{where}: a default-deny NetworkPolicy covers every fleetcmd pod")
    for w in workloads:
        labels = w["spec"]["template"]["metadata"]["labels"]
        comp = labels.get("app.kubernetes.io/component")
        ingress_ports = {pt.get("port") for p in nps if selector_matches(p["spec"]["podSelector"], labels)
                         for rule in p["spec"].get("ingress", []) for pt in rule.get("ports", [])}
        egress_ports = {pt.get("port") for p in nps if selector_matches(p["spec"]["podSelector"], labels)
                        for rule in p["spec"].get("egress", []) for pt in rule.get("ports", [])}
        want_in = {"registry": {50051}, "dispatcher": {50052}}.get(comp, set())
        # Every pod's metrics port is open to Prometheus; beyond it, only the APIs.
        api_in = ingress_ports - {METRICS_PORT}
        check(want_in <= api_in and (bool(want_in) or not api_in),
              f"{where}: {comp} ingress allowed on {sorted(ingress_ports) or 'nothing'}")
        want_out = {53}
        for e in ENGINES.get(comp, set()):
            want_out |= {"nats": {4222}, "scylla": {9042}, "kafka": {9092}, "mqtt": {1883}}[e]
        check(want_out <= egress_ports, f"{where}: {comp} egress allowed to {sorted(egress_ports)} (needs {sorted(want_out)})")

    # 7. routing: GRPCRoute -> Services, Gateway
    routes = by_kind.get("GRPCRoute", [])
    check(bool(routes), f"{where}: a GRPCRoute routes the APIs")
    for r in routes:
        rn = f"{where}: GRPCRoute/{r['metadata']['name']}"
        routed = {}
        for rule in r["spec"].get("rules", []):
            for b in rule.get("backendRefs", []):
                svc = services.get(b["name"])
                if not (svc and any(p["port"] == b.get("port") for p in svc["spec"]["ports"])):
                    fail(f"{rn}: backend {b['name']}:{b.get('port')} is a Service port here")
                for m in rule.get("matches", []):
                    routed[(m.get("method") or {}).get("service")] = b["name"]
        for kind, svc_name in API_SERVICES.items():
            target = services.get(routed.get(svc_name, ""))
            check(target is not None and (target["spec"].get("selector") or {}).get("app.kubernetes.io/component") == kind,
                  f"{rn}: {svc_name} goes to the {kind} Service")
        for pref in r["spec"].get("parentRefs", []):
            if pref.get("kind", "Gateway") == "Gateway" and not pref.get("namespace"):
                gw = named("Gateway", pref["name"])
                if name == "base":
                    ok(f"{rn}: parent Gateway {pref['name']} comes from the overlay")
                else:
                    check(gw is not None, f"{rn}: parent Gateway {pref['name']} is in the kustomization")
    # 8. the example policy Secret, when rendered
    for s in secrets.values():
        for k, v in (s.get("stringData") or {}).items():
            if k.endswith(".toml"):
                check_policy(f"{where}: Secret/{s['metadata']['name']}:{k}", v, actions)
    finish()


def main() -> None:
    args = sys.argv[1:]
    if not args:
        print(__doc__)
        sys.exit(2)
    cmd, rest = args[0], args[1:]
    if rest:
        rest[0] = str(Path(rest[0]).resolve())
    if cmd == "config-keys":
        for k, t in config_keys(Path(rest[0])).items():
            print(f"{k}\t{env_name(k)}\t{t}")
    elif cmd == "dockerfile":
        cmd_dockerfile(Path(rest[0]))
        finish()
    elif cmd == "context":
        cmd_context(Path(rest[0]), rest[1] if len(rest) > 1 else None)
        finish()
    elif cmd == "compose":
        cmd_compose(Path(rest[0]), rest[1])
    elif cmd == "k8s":
        cmd_k8s(Path(rest[0]), rest[1], rest[2], rest[3], rest[4])
    elif cmd == "policy":
        acts = policy_actions(Path(rest[0]))
        for f in rest[1:]:
            check_policy(f, Path(f).read_text(), acts)
        finish()
    else:
        print(__doc__)
        sys.exit(2)


if __name__ == "__main__":
    main()
