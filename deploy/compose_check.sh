#!/usr/bin/env bash
# `docker compose --profile cpu up`, for real, against a Docker engine this script starts and stops.
#
#   bash deploy/compose_check.sh        (make compose-check; .ci/run after make test)
#
# On a machine with no engine running (as root): installs Docker, Compose and debootstrap from the
# distribution when missing; starts dockerd on a private socket and data root; builds a local Python
# base image once (no image registry is needed) and a PostgreSQL image standing in for postgres:16;
# builds deploy/Dockerfile.cpu; runs the image's own checks and shows it runs as non-root; brings the
# cpu profile up with the ports published on 127.0.0.1; sends POST /rubrics and POST
# /teacher_logprobs with the API key of the env file it writes; restarts the stack and reads the stored
# rubric back (the store's volume outlived the containers); runs the trainer profile for one step
# against the services; then `down -v`, and stops the engine. Ends with a table of times and one JSON line.
#
# The engine's data root (images, build cache) and the base image's root filesystem persist in
# $RCSD_DOCKER_CACHE (default /var/cache/rcsd-docker), so a second run rebuilds only what changed.
# The machine's pip configuration (`pip config list`: index, CA bundle, local wheel folders) reaches
# the build as BuildKit secrets and a file server on 127.0.0.1 for the build's lifetime; none of it is
# stored in the image. Exit status: 0 passed, 3 skipped (no engine can start here: the reason is
# printed), anything else failed.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CACHE=${RCSD_DOCKER_CACHE:-/var/cache/rcsd-docker}
SUITE=bookworm  # its python3 is 3.11: the CPU torch wheels a machine keeps locally are cp311
BASE_IMAGE=rcsd-local/python:$SUITE
STORE_IMAGE=rcsd-local/postgres:$SUITE
TAG=check
IMAGE=rcsd-cpu:$TAG
PROJECT=rcsd-check
VLLM_VERSION=$(sed -n 's/^VLLM_VERSION=//p' "$REPO/deploy/install.sh")
READY_TIMEOUT_S=${RCSD_READY_TIMEOUT_S:-900}
T0=$SECONDS
declare -a TIMES=()

say() { printf '\n== %s  [%ds]\n' "$*" "$((SECONDS - T0))"; }
skip() { printf '\ncompose check SKIPPED: %s\n' "$*"; exit 3; }
timed() {  # timed LABEL COMMAND...: runs it and records how long it took
    # In the background, waited for: a TERM (a CI timeout) is handled at once, not after a long build.
    local label=$1 start=$SECONDS status=0
    shift
    "$@" &
    wait $! || status=$?
    TIMES+=("$label=$((SECONDS - start))")
    return "$status"
}

# -- What this machine must have ------------------------------------------------------------------
[ "$(id -u)" = 0 ] || skip "dockerd needs root (run as root, or use an engine you have: docker compose --profile cpu up)"
if pgrep -x dockerd > /dev/null; then
    skip "a Docker engine already runs here; this check starts its own (use that one: docker compose --profile cpu up)"
fi
if ! command -v dockerd > /dev/null || ! command -v docker-compose > /dev/null || ! command -v debootstrap > /dev/null; then
    command -v apt-get > /dev/null || skip "no dockerd/docker-compose/debootstrap and no apt-get to install them"
    say "installing docker.io docker-compose debootstrap"
    if ! { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q docker.io docker-compose debootstrap; } > /tmp/rcsd-compose-apt.log 2>&1; then
        tail -5 /tmp/rcsd-compose-apt.log
        skip "could not install Docker from the distribution's packages (/tmp/rcsd-compose-apt.log)"
    fi
fi
# Docker's own client, which builds with the engine's BuildKit (--secret) without a buildx plugin.
DOCKER=${RCSD_DOCKER_CLI:-$(command -v /usr/bin/docker || command -v docker)}

mkdir -p "$CACHE"
exec 9> "$CACHE/lock"
flock -n 9 || skip "another compose check holds $CACHE/lock"
WORK=$(mktemp -d /tmp/rcsd-compose.XXXXXX)
export DOCKER_HOST=unix://$WORK/docker.sock DOCKER_BUILDKIT=1
ENGINE_PID="" SERVER_PID="" STACK_UP=0

compose() {
    docker-compose --project-name "$PROJECT" --project-directory "$REPO" --file "$REPO/docker-compose.yml" \
        --env-file "$WORK/env" "$@"
}

cleanup() {
    local status=$?
    trap - EXIT INT TERM
    set +e
    if [ "$STACK_UP" = 1 ]; then
        [ "$status" = 0 ] || compose --profile cpu --profile trainer logs --no-color --tail 40
        say "docker-compose down -v"
        compose --profile cpu --profile trainer down -v --remove-orphans
    fi
    [ -z "$SERVER_PID" ] || kill "$SERVER_PID" 2> /dev/null
    if [ -n "$ENGINE_PID" ]; then
        "$DOCKER" image prune -f > /dev/null  # the images a rebuild replaced
        say "stopping the engine (pid $ENGINE_PID)"
        kill "$ENGINE_PID"
        for _ in $(seq 60); do kill -0 "$ENGINE_PID" 2> /dev/null || break; sleep 1; done
        [ "$status" = 0 ] || tail -20 "$WORK/dockerd.log"
    fi
    rm -rf "$WORK"
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# -- The engine -----------------------------------------------------------------------------------
start_engine() {  # start_engine DRIVER: dockerd on a private socket, exec root and data root
    dockerd --storage-driver "$1" --data-root "$CACHE/engine-$1" --exec-root "$WORK/exec" \
        --pidfile "$WORK/dockerd.pid" --host "$DOCKER_HOST" > "$WORK/dockerd.log" 2>&1 &
    ENGINE_PID=$!
    for _ in $(seq 60); do
        "$DOCKER" version > /dev/null 2>&1 && return 0
        kill -0 "$ENGINE_PID" 2> /dev/null || break
        sleep 1
    done
    kill "$ENGINE_PID" 2> /dev/null
    wait "$ENGINE_PID" 2> /dev/null
    ENGINE_PID=""
    return 1
}
say "starting dockerd on $DOCKER_HOST (data root under $CACHE)"
DRIVER=${RCSD_DOCKER_STORAGE_DRIVER:-}
if [ -z "$DRIVER" ]; then
    # overlay2 where the kernel and filesystem allow it, else vfs (slower: a full copy per layer)
    if start_engine overlay2; then DRIVER=overlay2; elif start_engine vfs; then DRIVER=vfs; fi
elif start_engine "$DRIVER"; then :; else DRIVER=""; fi
if [ -z "$DRIVER" ]; then
    tail -5 "$WORK/dockerd.log"
    skip "dockerd does not start on this machine (its log's last lines are above)"
fi
"$DOCKER" version --format 'engine {{.Server.Version}}, client {{.Client.Version}}, storage '"$DRIVER"

# -- The base images: a registry-free Python, and PostgreSQL for the rubric store ------------------
debian_mirror() {  # the mirror apt uses here, else Debian's own
    local uri
    uri=$(grep -rhoE '^(URIs:|deb) +https?://[^ ]+/debian/?( |$)' /etc/apt/sources.list /etc/apt/sources.list.d/ 2> /dev/null \
        | head -1 | awk '{print $2}')
    echo "${RCSD_DEBIAN_MIRROR:-${uri:-http://deb.debian.org/debian}}"
}
build_base() {
    local rootfs=$CACHE/base/$SUITE-python3.tar
    if [ ! -s "$rootfs" ]; then
        local root=$CACHE/base/$SUITE-root
        mkdir -p "$CACHE/base"
        rm -rf "$root"
        debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates "$SUITE" "$root" \
            "$(debian_mirror)" > "$WORK/debootstrap.log" 2>&1 || { tail -20 "$WORK/debootstrap.log"; return 1; }
        rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
        tar -C "$root" -c . > "$rootfs.part" && mv "$rootfs.part" "$rootfs" && rm -rf "$root"
    fi
    "$DOCKER" import --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change 'ENV LANG=C.UTF-8' --change 'CMD ["python3"]' "$rootfs" "$BASE_IMAGE" > /dev/null
}
build_postgres() {
    # The part of the official postgres image's contract that docker-compose.yml uses: POSTGRES_USER,
    # POSTGRES_PASSWORD and POSTGRES_DB on the first start, the data in /var/lib/postgresql/data, 5432.
    mkdir -p "$WORK/postgres"
    cat > "$WORK/postgres/entrypoint.sh" << 'EOF'
#!/bin/sh
set -eu
if [ ! -s "$PGDATA/PG_VERSION" ]; then
    printf '%s\n' "$POSTGRES_PASSWORD" > /tmp/password
    initdb -D "$PGDATA" -U "$POSTGRES_USER" --pwfile=/tmp/password --auth-local=trust --auth-host=scram-sha-256
    rm /tmp/password
    echo "host all all all scram-sha-256" >> "$PGDATA/pg_hba.conf"
    pg_ctl -D "$PGDATA" -o "-c listen_addresses=''" -w start
    [ "${POSTGRES_DB:-postgres}" = postgres ] || createdb -U "$POSTGRES_USER" "$POSTGRES_DB"
    pg_ctl -D "$PGDATA" -m fast -w stop
fi
exec postgres -D "$PGDATA" -c listen_addresses='*'
EOF
    cat > "$WORK/postgres/Dockerfile" << EOF
FROM $BASE_IMAGE
RUN apt-get update && apt-get install -y --no-install-recommends postgresql \\
    && rm -rf /var/lib/apt/lists/* && pg_dropcluster --stop 15 main \\
    && mkdir -p /var/lib/postgresql/data /var/run/postgresql \\
    && chown postgres:postgres /var/lib/postgresql/data /var/run/postgresql && chmod 700 /var/lib/postgresql/data
COPY --chmod=755 entrypoint.sh /usr/local/bin/postgres-entrypoint
ENV PATH=/usr/lib/postgresql/15/bin:\$PATH PGDATA=/var/lib/postgresql/data
USER postgres
STOPSIGNAL SIGINT
EXPOSE 5432
ENTRYPOINT ["postgres-entrypoint"]
EOF
    "$DOCKER" build -q --network host -t "$STORE_IMAGE" "$WORK/postgres" > /dev/null
}
if ! "$DOCKER" image inspect "$BASE_IMAGE" > /dev/null 2>&1; then
    say "building the base image $BASE_IMAGE (debootstrap $SUITE, once: cached in $CACHE)"
    timed base_image_s build_base
fi
say "the PostgreSQL image $STORE_IMAGE"
timed postgres_image_s build_postgres

# -- The CPU image --------------------------------------------------------------------------------
# The machine's pip configuration as build inputs: its CA bundle and a pip.conf in which local
# folders (wheels, file:// indexes, the constraints file) are served on 127.0.0.1 for the build.
PORT_SERVE=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
BUILD_INPUTS=$(python3 - "$WORK/pip" "$PORT_SERVE" << 'PY'
import configparser
import os
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

out, port = Path(sys.argv[1]), sys.argv[2]
(out / "serve").mkdir(parents=True)
listed = subprocess.run([sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True).stdout
settings: dict[str, str] = {}
for scope in ("global.", "install.", ":env:."):  # pip's precedence: files, then PIP_* variables
    for line in listed.splitlines():
        key, _, value = line.partition("=")
        if key.startswith(scope):
            settings[key.removeprefix(scope)] = value.strip("'\"")


def served(location: str, parent: bool) -> str:
    """An http://127.0.0.1 URL for a local folder or file (its parent served, for relative links)."""
    path = Path(urlsplit(location).path if location.startswith("file:") else location)
    name = f"d{len(list((out / 'serve').iterdir()))}"
    target = path.parent if parent else path
    (out / "serve" / name).symlink_to(target)
    return f"http://127.0.0.1:{port}/{name}" + (f"/{path.name}" if parent else "") + ("/" if path.is_dir() else "")


local = lambda v: v.startswith(("file:", "/"))  # noqa: E731
conf = configparser.ConfigParser()
conf["global"] = {}
torch_here = False
for key, value in settings.items():
    items = value.split()
    if key in ("index-url", "extra-index-url", "find-links"):
        for item in items:
            if key == "find-links" and local(item):
                folder = Path(urlsplit(item).path if item.startswith("file:") else item)
                torch_here |= any(folder.glob("torch-*+cpu-*.whl"))
        conf["global"][key] = " ".join(served(i, parent=key != "find-links") if local(i) else i for i in items)
    elif key == "constraint":
        conf["global"][key] = " ".join(served(i, parent=True) if local(i) else i for i in items)
    elif key in ("cert", "client-cert"):
        if key == "cert" and os.path.isfile(value):
            print(f"--secret id=ca_bundle,src={value}")
    elif key in ("timeout", "default-timeout", "retries", "trusted-host", "proxy", "no-index", "prefer-binary"):
        conf["global"][key] = value
if settings:
    with open(out / "pip.conf", "w") as file:
        conf.write(file)
    print(f"--secret id=pip_conf,src={out / 'pip.conf'}")
if torch_here:  # the CPU torch lies in a local folder: no need for PyTorch's index
    print("--build-arg TORCH_INDEX_URL=")
PY
)
python3 -m http.server "$PORT_SERVE" --bind 127.0.0.1 --directory "$WORK/pip/serve" > "$WORK/serve.log" 2>&1 &
SERVER_PID=$!
build_image() {
    # shellcheck disable=SC2086  # BUILD_INPUTS: one flag and value per line, no spaces in them
    "$DOCKER" build --progress=plain --network host -f deploy/Dockerfile.cpu -t "$IMAGE" \
        --build-arg BASE_IMAGE="$BASE_IMAGE" $BUILD_INPUTS "$REPO" > "$WORK/build.log" 2>&1 \
        || { tail -40 "$WORK/build.log"; return 1; }
    # each step: CACHED, or how long it took
    python3 - "$WORK/build.log" << 'PY'
import re
import sys

names, ends = {}, {}
for line in open(sys.argv[1]):
    if match := re.match(r"#(\d+) (\[ *\d+/\d+\] .*)", line):
        names[match[1]] = match[2][:90]
    elif match := re.match(r"#(\d+) (CACHED|DONE [\d.]+s)", line):
        ends[match[1]] = match[2]
for step, name in names.items():
    print(f"  {ends.get(step, '?'):>12}  {name}")
PY
}
say "building $IMAGE (deploy/Dockerfile.cpu, FROM $BASE_IMAGE)"
echo "build inputs: ${BUILD_INPUTS//$'\n'/ }"
cd "$REPO"
timed image_build_s build_image
kill "$SERVER_PID"
SERVER_PID=""

say "the image's own checks"
"$DOCKER" run --rm --entrypoint python3 "$IMAGE" /opt/rcsd/deploy/check_image.py "$VLLM_VERSION"
USER_ID=$("$DOCKER" run --rm --entrypoint id "$IMAGE" -u)
[ "$USER_ID" != 0 ] || { echo "the image runs as root"; exit 1; }
SIZE_MB=$(( $("$DOCKER" image inspect -f '{{.Size}}' "$IMAGE") / 1000000 ))
echo "runs as uid $USER_ID; image size ${SIZE_MB} MB"

# -- The stack ------------------------------------------------------------------------------------
free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
KEY=$(python3 -c 'import secrets; print(secrets.token_urlsafe(24))')
TEACHER_PORT=$(free_port)
RUBRIC_PORT=$(free_port)
mkdir -p "$WORK/runs"
chown 1000:1000 "$WORK/runs"  # the image's user (RCSD_UID)
{
    grep -vE '^(COMPOSE_PROFILES|RCSD_TEACHER_HOST_PORT|RCSD_RUBRIC_HOST_PORT|RCSD_BIND_ADDRESS|POSTGRES_PASSWORD)=' "$REPO/.env.example"
    cat << EOF
COMPOSE_PROFILES=cpu
RCSD_BIND_ADDRESS=127.0.0.1
RCSD_TEACHER_HOST_PORT=$TEACHER_PORT
RCSD_RUBRIC_HOST_PORT=$RUBRIC_PORT
POSTGRES_PASSWORD=$(python3 -c 'import secrets; print(secrets.token_hex(12))')
RCSD_TEACHER_API_KEY=$KEY
RCSD_RUBRIC_API_KEY=$KEY
RCSD_API_KEY=$KEY
RCSD_IMAGE_TAG=$TAG
RCSD_POSTGRES_IMAGE=$STORE_IMAGE
RCSD_RUNS_DIR=$WORK/runs
RCSD_TRAINER_STEPS=1
RCSD_TRAINER_CONFIG=/runs/check.yaml
EOF
} > "$WORK/env"
# Compose passes a bare `- NAME` on from the shell: the env file's values are the shell's too.
set -a
# shellcheck disable=SC1091
. "$WORK/env"
set +a
API_KEY=$(sed -n 's/^RCSD_API_KEY=//p' "$WORK/env")
TEACHER=http://127.0.0.1:$TEACHER_PORT
RUBRIC=http://127.0.0.1:$RUBRIC_PORT

wait_ready() {  # both services answer /ready through the ports published on 127.0.0.1
    local deadline=$((SECONDS + READY_TIMEOUT_S))
    for url in "$TEACHER" "$RUBRIC"; do
        until curl -fsS -o /dev/null "$url/ready" 2> /dev/null; do
            if [ "$SECONDS" -gt "$deadline" ]; then echo "$url/ready: not ready in ${READY_TIMEOUT_S}s"; return 1; fi
            # a service whose engine fails to load exits, and Docker restarts it: fail at once
            if "$DOCKER" inspect -f '{{.Name}} {{.RestartCount}} {{.State.Status}}' $(compose --profile cpu ps -q) \
                | grep -vE ' 0 running$'; then
                echo "a container exited or restarted"
                return 1
            fi
            sleep 3
        done
        echo "$url/ready: $(curl -fsS "$url/ready")"
    done
}
up() {
    compose --profile cpu up -d --no-build
    wait_ready
}
post() {  # post URL JSON: with the key, the answer on stdout
    curl -fsS "$1" -H "Authorization: Bearer $API_KEY" -H "Content-Type: application/json" -d "$2"
}
say "docker-compose --profile cpu up -d (first start: a new store)"
compose --profile cpu config -q
STACK_UP=1
timed first_start_s up
compose --profile cpu ps
docker_ports=$("$DOCKER" ps --format '{{.Ports}}' | tr ',' '\n' | grep -- '->' | sed 's/^ *//' | sort -u)
echo "published: $(echo "$docker_ports" | tr '\n' ' ')"
if echo "$docker_ports" | grep -vqE '^127\.0\.0\.1:'; then echo "a port is published beyond 127.0.0.1"; exit 1; fi

say "POST /rubrics and POST /teacher_logprobs with the key from the env file"
code=$(curl -s -o /dev/null -w '%{http_code}' "$RUBRIC/v1/info")
[ "$code" = 401 ] || { echo "GET /v1/info without the key answered $code, not 401"; exit 1; }
RUBRIC_REQUEST='{"question": "A ball falls from rest for 2 s. How far does it fall? Take g = 9.8 m/s^2.",
  "reference_answer": "d = g t^2 / 2 = 19.6 m", "bounds": {"min_criteria": 2, "max_criteria": 3},
  "temperature": 0.7, "seed": 0, "max_tokens": 2048}'
timed rubric_request_s post "$RUBRIC/rubrics" "$RUBRIC_REQUEST" > "$WORK/rubric.json"
RUBRIC_ID=$(python3 -c 'import json, sys; print(json.load(sys.stdin)["rubric_id"])' < "$WORK/rubric.json")
TEACHER_REQUEST=$(python3 - "$WORK/rubric.json" << 'PY'
import json
import sys

rubric = json.load(open(sys.argv[1]))
print(f"rubric {rubric['rubric_id']}: {[(c['weight'], c['title']) for c in rubric['criteria']]}", file=sys.stderr)
print(json.dumps({
    "question": "A ball falls from rest for 2 s. How far does it fall? Take g = 9.8 m/s^2.",
    "reference_answer": "d = g t^2 / 2 = 9.8 * 4 / 2 = 19.6 m",
    "rubric": rubric["criteria"],
    "context_mode": "rubric+reference",
    "completions": [[504, 337, 314, 216, 28], [40, 781, 17]],
    "top_k": 5,
}))
PY
)
timed teacher_request_s post "$TEACHER/teacher_logprobs" "$TEACHER_REQUEST" > "$WORK/teacher.json"
python3 - "$WORK/teacher.json" << 'PY'
import json
import math
import sys

answer = json.load(open(sys.argv[1]))
rows = answer["completions"]
assert [row["token_ids"] for row in rows] == [[504, 337, 314, 216, 28], [40, 781, 17]], rows
logprobs = [x for row in rows for x in row["logprobs"]]
assert all(math.isfinite(x) and x <= 0 for x in logprobs), logprobs
assert all(len(top) == 5 for row in rows for top in row["topk_ids"]), "top_k 5 at every position"
print(f"teacher: context {answer['context_length']} tokens ({answer['model']}, {answer['backend']}),")
print(f"  log-probs of the completions' tokens: {[[round(x, 3) for x in row['logprobs']] for row in rows]}")
PY

say "restarting the stack (down, up): the rubric comes back from the store's volume"
compose --profile cpu down
timed second_start_s up
curl -fsS -H "Authorization: Bearer $API_KEY" "$RUBRIC/rubrics/$RUBRIC_ID" > "$WORK/stored.json"
python3 - "$WORK/rubric.json" "$WORK/stored.json" << 'PY'
import json
import sys

made, stored = (json.load(open(path)) for path in sys.argv[1:])
assert stored["rubric_id"] == made["rubric_id"] and stored["criteria"] == made["criteria"], (made, stored)
print(f"GET /rubrics/{stored['rubric_id']} after the restart: the same {len(stored['criteria'])} criteria")
PY
again=$(post "$RUBRIC/rubrics" "$RUBRIC_REQUEST" | python3 -c 'import json, sys; print(json.load(sys.stdin)["cached"])')
[ "$again" = True ] || { echo "the same request after the restart was not served from the store"; exit 1; }
echo "the same POST /rubrics after the restart: cached: $again"

say "the trainer profile: rcsd train, one step, against the services"
# One real step (rubrics, rollouts, teacher scores, an update) made cheap: the demo config with the
# held-out probe off (it generates and scores before and after the step: most of the time) and fewer,
# shorter answers. The image's own config loader writes it; RCSD_TRAINER_CONFIG names it in /runs.
"$DOCKER" run --rm --entrypoint python3 "$IMAGE" -c 'import sys
from rcsd.trainer.config import load_config
print(load_config("smollm2_cpu.yaml", sys.argv[1:]).to_yaml(), end="")' \
    probe.data=[] prompts_per_step=2 sampling.max_new_tokens=32 rubric.max_tokens=384 > "$WORK/runs/check.yaml"
timed trainer_s compose --profile cpu --profile trainer run --rm trainer
ls -R "$WORK/runs" | head -20

say "docker-compose down -v"
compose --profile cpu --profile trainer down -v --remove-orphans
STACK_UP=0

TOTAL=$((SECONDS - T0))
say "compose check passed"
printf '%-22s %8s\n' step seconds
for entry in "${TIMES[@]}"; do printf '%-22s %8s\n' "${entry%%=*}" "${entry#*=}"; done
printf '%-22s %8s\n' total "$TOTAL"
printf '{"compose_check": "passed", "storage_driver": "%s", "image_mb": %s, "total_s": %s' "$DRIVER" "$SIZE_MB" "$TOTAL"
for entry in "${TIMES[@]}"; do printf ', "%s": %s' "${entry%%=*}" "${entry#*=}"; done
printf '}\n'
