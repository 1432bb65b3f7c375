#!/usr/bin/env bash
# The container deploy, taken through real stories: builds the image from Containerfile,
# starts compose.yaml (PostgreSQL + Damascus) with podman or docker, and then, through
# the HTTP API only, creates two projects on bare repositories in the volume and waits
# for a story to be merged in each: one built by a scripted agent, one by the image's
# real Claude Code talking to a scripted Anthropic-compatible server (scripts/smoke/).
# It checks /healthz and the container's health status, that SIGTERM drains a running
# phase within the grace period, and that a restarted container with the same volume
# and database finishes that story with nothing lost. Prints image sizes, the time from
# `up` to healthy and the idle memory.
#
#   scripts/container-smoke.sh                      # builds the binary inside the image
#   scripts/container-smoke.sh --prebuilt target/release   # takes DIR/damascus, built
#                                                   # on a Debian 12 (glibc 2.36) host
#   scripts/container-smoke.sh --keep               # leaves the containers running
#
# Where no image registry is reachable it makes the base images locally: Debian with
# mmdebstrap (apt-get install mmdebstrap), and a PostgreSQL stand-in built from it
# (scripts/smoke/postgres-standin.Containerfile). Behind a TLS-intercepting proxy,
# NODE_EXTRA_CA_CERTS (or SMOKE_BUILD_CA) names the CA bundle npm needs in the build.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

prebuilt=""
keep=0
while [ $# -gt 0 ]; do
    case "$1" in
        --prebuilt) prebuilt="${2:?--prebuilt needs a directory holding a damascus binary}"; shift 2 ;;
        --keep) keep=1; shift ;;
        *) echo "usage: $0 [--prebuilt DIR] [--keep]" >&2; exit 2 ;;
    esac
done

log() { echo "smoke: $*"; }
project=damascus-smoke
work=$(mktemp -d /tmp/damascus-smoke.XXXXXX)

# --- the engine ---------------------------------------------------------------------
engine=${CONTAINER_ENGINE:-}
if [ -z "$engine" ]; then
    if command -v podman >/dev/null; then engine=podman
    elif command -v docker >/dev/null; then engine=docker
    else echo "smoke: needs podman (apt-get install podman runc) or docker" >&2; exit 1
    fi
fi
if [ "$engine" = podman ]; then
    # podman-compose 1.1 or later: Debian 12's 1.0.3 leaves ${VAR:-} uninterpolated.
    if python3 -c 'import podman_compose' 2>/dev/null; then compose=(python3 -m podman_compose)
    elif command -v podman-compose >/dev/null; then compose=(podman-compose)
    else echo "smoke: needs podman-compose 1.1 or later (pip install podman-compose)" >&2; exit 1
    fi
else
    compose=(docker compose)
fi
compose+=(-p "$project" -f "$root/compose.yaml")

fail() {
    echo "smoke: FAILED: $*" >&2
    for service in damascus postgres; do
        c=$(container_of "$service" 2>/dev/null || true)
        [ -n "$c" ] && { echo "--- $service log (last 80 lines)" >&2; $engine logs --tail 80 "$c" >&2 || true; }
    done
    exit 1
}
container_of() {
    $engine ps -a --filter "label=com.docker.compose.project=$project" \
        --filter "label=com.docker.compose.service=$1" --format '{{.Names}}' | head -n1
}
cleanup() {
    if [ "$keep" = 0 ]; then
        $engine rm -f -t 0 "$project-anthropic" >/dev/null 2>&1 || true
        "${compose[@]}" down -v -t 5 >/dev/null 2>&1 || true
    else
        log "left running (--keep): ${compose[*]} down -v"
    fi
    rm -rf "$work"
}
trap cleanup EXIT

have_image() { $engine image inspect "$1" >/dev/null 2>&1; }
pull() { timeout 120 $engine pull -q "$1" >/dev/null 2>&1; }

# --- base images --------------------------------------------------------------------
debian=docker.io/library/debian:bookworm-slim
if ! have_image "$debian" && ! pull "$debian"; then
    command -v mmdebstrap >/dev/null \
        || fail "cannot pull $debian and mmdebstrap is missing (apt-get install mmdebstrap)"
    log "no registry: making $debian with mmdebstrap"
    # As Debian's official slim images are made: no manuals, docs or translations
    # (the dpkg settings stay in the image, so later installs leave them out too).
    mmdebstrap --quiet --variant=minbase \
        --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/info/*' \
        --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-include=/usr/share/doc/*/copyright' \
        --dpkgopt='path-exclude=/usr/share/locale/*' --dpkgopt='path-include=/usr/share/locale/locale.alias' \
        --aptopt='APT::Install-Recommends "false"' \
        --customize-hook='rm -rf "$1"/var/cache/apt/*.bin "$1"/var/lib/apt/lists/*' \
        bookworm "$work/rootfs.tar"
    $engine import -q "$work/rootfs.tar" "$debian" >/dev/null
    rm -f "$work/rootfs.tar"
fi
# Hosts whose cgroups crun refuses, or where the default ulimits need a capability
# the host lacks: podman with runc and explicit limits.
if [ "$engine" = podman ] && ! podman run --rm "$debian" true >/dev/null 2>&1; then
    command -v runc >/dev/null || fail "podman cannot start a container here; try: apt-get install runc"
    cat > "$work/containers.conf" <<'CONF'
[containers]
default_ulimits = ["nofile=1024:1024", "nproc=4096:4096"]
[engine]
runtime = "runc"
CONF
    export CONTAINERS_CONF="$work/containers.conf"
    podman run --rm "$debian" true >/dev/null || fail "podman cannot start a container, also with runc"
    log "podman runs with runc and explicit ulimits ($CONTAINERS_CONF)"
fi

export POSTGRES_IMAGE=docker.io/library/postgres:16
if ! have_image "$POSTGRES_IMAGE" && ! pull "$POSTGRES_IMAGE"; then
    POSTGRES_IMAGE=localhost/damascus-smoke/postgres-standin:15
    log "no registry: building $POSTGRES_IMAGE from Debian's PostgreSQL"
    $engine build -q --network=host -t "$POSTGRES_IMAGE" \
        -f scripts/smoke/postgres-standin.Containerfile scripts/smoke >/dev/null
fi

# --- the images ---------------------------------------------------------------------
image=localhost/damascus:smoke
build=(build --network=host -f Containerfile)
# podman's default OCI format drops HEALTHCHECK; the docker format keeps it.
[ "$engine" = podman ] && build+=(--format docker)
if [ -n "$prebuilt" ]; then
    [ -x "$prebuilt/damascus" ] || fail "$prebuilt/damascus is not an executable"
    mkdir -p "$work/bin"
    cp "$prebuilt/damascus" "$work/bin/damascus"
    build+=(--build-arg BINARY=prebuilt --build-context "damascus-bin=$work/bin")
fi
ca=${SMOKE_BUILD_CA:-${NODE_EXTRA_CA_CERTS:-}}
if [ -n "$ca" ] && [ -s "$ca" ]; then
    build+=(--secret "id=build-ca,src=$ca")
fi
log "building $image-core (--target core) and $image"
$engine "${build[@]}" --target core -t "$image-core" . >"$work/build-core.log" 2>&1 \
    || { tail -40 "$work/build-core.log"; fail "building the core image"; }
$engine "${build[@]}" -t "$image" . >"$work/build.log" 2>&1 \
    || { tail -40 "$work/build.log"; fail "building the image"; }
size_mb() { $engine image inspect --format '{{.Size}}' "$1" | awk '{printf "%.0f", $1/1e6}'; }
size_core=$(size_mb "$image-core")
size_full=$(size_mb "$image")

# --- up -----------------------------------------------------------------------------
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
token="dmsc_0_$(od -An -tx1 -N24 /dev/urandom | tr -d ' \n')"
export DAMASCUS_IMAGE=$image DAMASCUS_PORT="127.0.0.1:$port" DAMASCUS_BOOTSTRAP_TOKEN=$token
export POSTGRES_PASSWORD="pw$(od -An -tx1 -N12 /dev/urandom | tr -d ' \n')"
export ANTHROPIC_BASE_URL=http://anthropic-stub:8081 ANTHROPIC_API_KEY=sk-smoke-not-a-key
export ANTHROPIC_MODEL=claude-sonnet-4-5-20250929 DAMASCUS_GRACE_SECS=30 DAMASCUS_CONCURRENCY=4
base="http://127.0.0.1:$port"

"${compose[@]}" down -v -t 5 >/dev/null 2>&1 || true
health_status() { # CONTAINER
    if [ "$engine" = podman ]; then
        # podman runs health checks from systemd timers; where there is no systemd
        # (a container, a CI runner) nothing runs them, so run one now.
        podman healthcheck run "$1" >/dev/null 2>&1 || true
        podman inspect --format '{{.State.Health.Status}}' "$1" 2>/dev/null \
            || podman inspect --format '{{.State.Healthcheck.Status}}' "$1"
    else
        docker inspect --format '{{.State.Health.Status}}' "$1"
    fi
}
wait_status_healthy() { # CONTAINER SECONDS
    local deadline=$(( $(date +%s) + $2 ))
    until [ "$(health_status "$1")" = healthy ]; do
        [ "$(date +%s)" -lt "$deadline" ] || fail "$1's health status is $(health_status "$1"), not healthy, after $2 s"
        sleep 1
    done
}

started=$(date +%s.%N)
if [ "$engine" = podman ]; then
    # What compose's `depends_on: condition: service_healthy` means, done by hand:
    # podman before 4.6 cannot wait for a health status, so podman-compose skips it.
    "${compose[@]}" up -d --no-build postgres >"$work/up.log" 2>&1 || { cat "$work/up.log"; fail "compose up postgres"; }
    wait_status_healthy "$(container_of postgres)" 60
fi
"${compose[@]}" up -d --no-build >>"$work/up.log" 2>&1 || { cat "$work/up.log"; fail "compose up"; }
wait_healthy() {
    local deadline=$(( $(date +%s) + 120 ))
    until curl -fsS "$base/healthz" >/dev/null 2>&1; do
        [ "$(date +%s)" -lt "$deadline" ] || fail "/healthz did not answer within 120 s"
        sleep 0.2
    done
}
wait_healthy
healthy_after=$(awk -v a="$started" -v b="$(date +%s.%N)" 'BEGIN{printf "%.1f", b-a}')
ctr=$(container_of damascus)
[ -n "$ctr" ] || fail "no damascus container"
log "/healthz answered ${healthy_after} s after up ($ctr)"

wait_status_healthy "$ctr" 90
log "container health status: healthy"

# --- through the HTTP API -----------------------------------------------------------
api() { # METHOD PATH [JSON]
    curl -sS -X "$1" -H "Authorization: Bearer $token" -H 'content-type: application/json' \
        ${3:+--data "$3"} "$base$2"
}
json() { python3 -c 'import json,sys; d=json.load(sys.stdin); print(eval(sys.argv[1], {"d": d}))' "$1"; }

[ "$(curl -s -o /dev/null -w '%{http_code}' "$base/v1/stats")" = 401 ] || fail "/v1/stats answered without a token"
api GET /v1/stats | json 'd["queue"]["concurrency"]' >/dev/null || fail "the bootstrap token was not accepted"

volume="${project}_damascus-data"
# The repositories live in the volume, made by a one-off container as the damascus user.
$engine run --rm --no-healthcheck -v "$volume:/var/lib/damascus/data" --entrypoint sh "$image" -c '
    set -e
    for name in scripted claude drain; do
        repo=/var/lib/damascus/data/repos/$name.git
        git init -q --bare -b main "$repo"
        seed=$(mktemp -d)
        git -C "$seed" init -q -b main
        echo "# $name" > "$seed/README.md"
        git -C "$seed" add README.md
        git -C "$seed" -c user.name=smoke -c user.email=smoke@localhost commit -q -m "first commit"
        git -C "$seed" push -q "$repo" main
    done' || fail "creating the bare repositories in the volume"

# The anthropic stub, on compose's network, in a container of the same image (Node.js).
network=$($engine inspect --format '{{range $k, $v := .NetworkSettings.Networks}}{{$k}} {{end}}' "$ctr" | awk '{print $1}')
$engine run -d --no-healthcheck --name "$project-anthropic" --network "$network" --network-alias anthropic-stub \
    -v "$root/scripts/smoke:/smoke:ro,z" --entrypoint node "$image" /smoke/anthropic-stub.mjs >/dev/null \
    || fail "starting the scripted Anthropic server"

add_project() { # NAME AGENT_JSON_OR_null
    local answer
    answer=$(api POST /v1/projects "{\"name\": \"$1\", \"repository\": \"/var/lib/damascus/data/repos/$1.git\", \"spec_mode\": \"passthrough\", \"test_command\": \"grep -qx hello hello.txt\", \"agent_command\": $2}")
    [ "$(echo "$answer" | json 'd.get("name")')" = "$1" ] || fail "POST /v1/projects $1: $answer"
}
ingest() { # PROJECT -> id
    local answer
    answer=$(api POST /v1/items "$(python3 -c 'import json, sys; print(json.dumps({
        "project": sys.argv[1], "title": "Greet the reader",
        "body": "Greet the reader.\n\n## Acceptance criteria\n- hello.txt holds the word hello\n\n"
                "## Test command\n`grep -qx hello hello.txt`\n"}))' "$1")")
    echo "$answer" | json 'd["id"]' 2>/dev/null || fail "POST /v1/items: $answer"
}
phase_of() { api GET "/v1/items/$1" | json 'd["item"]["phase"]'; }
wait_merged() { # ID WHAT SECONDS
    local deadline=$(( $(date +%s) + $3 )) phase
    while :; do
        phase=$(phase_of "$1")
        case "$phase" in
            merged) return 0 ;;
            blocked|cancelled) fail "$2 (item $1) is $phase: $(api GET "/v1/items/$1" | json 'd["item"]["last_verdict_reason"]')" ;;
        esac
        [ "$(date +%s)" -lt "$deadline" ] || fail "$2 (item $1) is still $phase after $3 s"
        sleep 1
    done
}

# The scripted agent first says who it runs as and what of the orchestrator it can see.
add_project scripted '["sh", "-c", "echo \"agent user: $(id -un)\"; env | grep -q ^DATABASE_URL= && echo \"agent sees DATABASE_URL\"; cat /proc/1/environ /proc/[0-9]*/environ 2>/dev/null | tr \"\\\\0\" \"\\\\n\" | grep -q ^DATABASE_URL= && echo \"agent reads a process environment with DATABASE_URL\"; exec /usr/share/damascus/examples/demo-agent.sh"]'
add_project claude null
scripted_item=$(ingest scripted)
claude_item=$(ingest claude)
wait_merged "$scripted_item" "the scripted agent's story" 180
log "scripted agent: item $scripted_item merged"
agent_log=$(curl -sN --max-time 3 -H "Authorization: Bearer $token" "$base/v1/items/$scripted_item/logs" || true)
echo "$agent_log" | grep -q 'agent user: damascus-agent' \
    || fail "the agent did not run as damascus-agent; its log: $agent_log"
if echo "$agent_log" | grep -q 'agent sees\|agent reads'; then
    fail "the agent reached the orchestrator's environment: $agent_log"
fi
log "the agent ran as damascus-agent and saw no DATABASE_URL (its log, through GET /v1/items/$scripted_item/logs)"
wait_merged "$claude_item" "Claude Code's story" 300
turns=$($engine exec "$project-anthropic" curl -fsS http://127.0.0.1:8081/_seen | json 'd["messages"]')
[ "$turns" -ge 2 ] || fail "Claude Code's story merged, but the scripted model saw $turns requests"
log "Claude Code $(tr -d '[:space:]' < tests/claude-code.version): item $claude_item merged after $turns model turns"
$engine run --rm --no-healthcheck -v "$volume:/var/lib/damascus/data" --entrypoint git "$image" \
    --git-dir=/var/lib/damascus/data/repos/claude.git show main:hello.txt | grep -qx hello \
    || fail "main of the claude repository has no hello.txt holding hello"

# --- idle memory --------------------------------------------------------------------
sleep 5
init_pid=$($engine inspect --format '{{.State.Pid}}' "$ctr")
rss_kb=0
for child in $(cat /proc/"$init_pid"/task/*/children 2>/dev/null) "$init_pid"; do
    kb=$(awk '/^VmRSS:/ {print $2}' /proc/"$child"/status 2>/dev/null || echo 0)
    rss_kb=$(( rss_kb + ${kb:-0} ))
done
idle_mb=$(awk -v k="$rss_kb" 'BEGIN{printf "%.1f", k/1024}')
log "idle memory of the damascus container (RSS of its processes): $idle_mb MB"

# --- SIGTERM drains; a restart resumes ----------------------------------------------
add_project drain '["sh", "-c", "sleep 8; exec /usr/share/damascus/examples/demo-agent.sh"]'
drain_item=$(ingest drain)
deadline=$(( $(date +%s) + 60 ))
until [ "$(phase_of "$drain_item")" = build ] && [ "$(api GET /v1/stats | json 'd["queue"]["running"]')" -ge 1 ]; do
    [ "$(date +%s)" -lt "$deadline" ] || fail "item $drain_item never started its build"
    sleep 0.2
done
sleep 2
events_before=$(api GET "/v1/items/$drain_item" | json 'len(d["events"])')
stop_started=$(date +%s.%N)
$engine stop -t 45 "$ctr" >/dev/null
stopped_after=$(awk -v a="$stop_started" -v b="$(date +%s.%N)" 'BEGIN{printf "%.1f", b-a}')
exit_code=$($engine inspect --format '{{.State.ExitCode}}' "$ctr")
[ "$exit_code" = 0 ] || fail "damascus exited $exit_code on SIGTERM"
awk -v s="$stopped_after" -v g="$DAMASCUS_GRACE_SECS" 'BEGIN{exit !(s < g)}' \
    || fail "SIGTERM took $stopped_after s, more than the grace period of $DAMASCUS_GRACE_SECS s"
log "SIGTERM: drained and exited 0 in $stopped_after s (grace $DAMASCUS_GRACE_SECS s)"

$engine start "$ctr" >/dev/null
wait_healthy
wait_merged "$drain_item" "the story running when SIGTERM came" 180
events_after=$(api GET "/v1/items/$drain_item" | json 'len(d["events"])')
[ "$events_after" -ge "$events_before" ] || fail "item $drain_item lost events across the restart"
for id in "$scripted_item" "$claude_item"; do
    [ "$(phase_of "$id")" = merged ] || fail "item $id is no longer merged after the restart"
done
total=$(api GET /v1/stats | json 'sum(d["items_per_phase"].values())')
[ "$total" = 3 ] || fail "expected 3 items after the restart, found $total"
log "restart: the drained story resumed and merged; 3 items, none lost"

echo
echo "container smoke test passed ($engine)"
echo "  image $image: ${size_full} MB; without the agent layer (--target core): ${size_core} MB"
echo "  compose up to /healthz: ${healthy_after} s; idle memory: ${idle_mb} MB"
echo "  SIGTERM with a running phase: ${stopped_after} s to exit 0"
