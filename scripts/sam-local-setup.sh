#!/usr/bin/env bash
# Prepare this machine for `sam local invoke` / `sam local start-api`, and say which
# samconfig environment to use for them (written to .tools/sam-config-env):
#
#   default  a Docker engine that can pull AWS's public Lambda image: nothing is installed
#            but the SAM CLI (in .tools/sam); no root, no apt-get, no debootstrap. This is a
#            Mac with Docker Desktop, or any machine with Docker and internet.
#   offline  no container registry (this project's CI): as root, Debian's docker.io and
#            debootstrap are installed if missing, dockerd is started if it does not
#            answer (containers reach this machine and nothing beyond), and a stand-in for
#            the AWS python3.13 Lambda image is built offline and tagged $SAM_LOCAL_IMAGE;
#            samconfig.toml's `offline` environment uses it.
#
# Idempotent and fast when everything is there. Works with CI=true, no stdin.
#
#   scripts/sam-local-setup.sh                 # set up, then print a summary
#   scripts/sam-local-setup.sh --print-gateway # only print the address containers reach
#   scripts/sam-local-setup.sh --config-env    # only print default or offline
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYENV_PY="${PYENV_PY:-$HOME/.pyenv/versions/3.13.0}"
SAM_LOCAL_IMAGE="${SAM_LOCAL_IMAGE:-piriod-adapter/python3.13-lambda:offline}"
STANDARD_IMAGE="public.ecr.aws/lambda/python:3.13"
CONFIG_ENV_FILE="$REPO_ROOT/.tools/sam-config-env"
SAM_CLI_VERSION="1.170.0"
AWSLAMBDARIC_SPEC="awslambdaric>=4.2,<5"
BOTO3_SPEC="boto3>=1.40,<2"
DEBIAN_MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
DOCKERD_LOG="${DOCKERD_LOG:-/var/log/dockerd-sam-local.log}"
DOCKERD_WAIT_SECONDS="${DOCKERD_WAIT_SECONDS:-60}"
SAM_VENV="$REPO_ROOT/.tools/sam"

export SAM_CLI_TELEMETRY=0
export DEBIAN_FRONTEND=noninteractive
# Never read a terminal: CI runs with no stdin.
exec </dev/null

log() { printf '[sam-local-setup] %s\n' "$*" >&2; }
die() { printf '[sam-local-setup] ERROR: %s\n' "$*" >&2; exit 1; }

# Docker's own CLI: Debian's docker.io puts it in /usr/bin; an unrelated client
# may sit earlier on PATH (e.g. /usr/local/bin/docker). Either talks to dockerd.
docker_cli() {
    if command -v docker >/dev/null 2>&1; then docker "$@"; else /usr/bin/docker "$@"; fi
}

gateway_ip() {
    local gw iface
    if [[ "$(uname -s)" != Linux ]]; then
        # Docker Desktop: host.docker.internal reaches this machine's loopback.
        printf '127.0.0.1\n'
        return
    fi
    gw="$(docker_cli network inspect bridge -f '{{range .IPAM.Config}}{{.Gateway}}{{end}}' 2>/dev/null || true)"
    if [[ -z "$gw" ]]; then
        # dockerd 20.10 leaves Gateway out of the default bridge's IPAM config:
        # read the bridge interface's own address instead.
        iface="$(docker_cli network inspect bridge \
            -f '{{index .Options "com.docker.network.bridge.name"}}' 2>/dev/null || true)"
        iface="${iface:-docker0}"
        gw="$(ip -4 -o addr show dev "$iface" 2>/dev/null | awk '{split($4, a, "/"); print a[1]; exit}')"
    fi
    [[ -n "$gw" ]] || die "could not find the docker bridge gateway IP (is dockerd running?)"
    printf '%s\n' "$gw"
}

if [[ "${1:-}" == "--print-gateway" ]]; then
    gateway_ip
    exit 0
elif [[ "${1:-}" == "--config-env" ]]; then
    cat "$CONFIG_ENV_FILE" 2>/dev/null || echo default
    exit 0
elif [[ $# -gt 0 ]]; then
    die "unknown argument: $1 (usage: $0 [--print-gateway | --config-env])"
fi

# Python 3.13, the Lambda runtime's, for the SAM CLI and `sam build`.
if [[ ! -x "$PYENV_PY/bin/python3.13" ]]; then
    found="$(command -v python3.13 || true)"
    [[ -n "$found" ]] || die "Python 3.13 is needed (pyenv's, or python3.13 on PATH)"
    PYENV_PY="$(cd "$(dirname "$found")/.." && pwd)"
fi
mkdir -p "$REPO_ROOT/.tools"

need_root() {
    [[ "$(id -u)" == 0 ]] || die "$1: run as root, or start Docker yourself (Docker Desktop)"
}

# ------------------------------------------------------------ 1. a Docker engine
apt_updated=0
apt_install() {
    need_root "installing $*"
    command -v apt-get >/dev/null 2>&1 || die "no Docker engine, and no apt-get to install one"
    if [[ $apt_updated == 0 ]]; then
        log "apt-get update"
        apt-get update -q >/dev/null
        apt_updated=1
    fi
    log "apt-get install $*"
    apt-get install -y -q --no-install-recommends "$@" >/dev/null
}

if docker_cli info >/dev/null 2>&1; then
    log "dockerd already answering"
else
    missing=()
    command -v dockerd >/dev/null 2>&1 || missing+=(docker.io)
    command -v ip >/dev/null 2>&1 || missing+=(iproute2)
    [[ ${#missing[@]} -eq 0 ]] || apt_install "${missing[@]}"
    need_root "starting dockerd"
    log "starting dockerd (log: $DOCKERD_LOG)"
    mkdir -p "$(dirname "$DOCKERD_LOG")"
    # setsid + nohup: dockerd outlives this script and its CI step.
    # --ip-forward=false: with --iptables=false, dockerd would otherwise set
    # net.ipv4.ip_forward=1 and the host would route containers' packets
    # (un-NATed) out of its default route.
    setsid nohup dockerd --iptables=false --ip-masq=false --ip-forward=false --ip=127.0.0.1 \
        >>"$DOCKERD_LOG" 2>&1 </dev/null &
    for ((i = 0; i < DOCKERD_WAIT_SECONDS; i++)); do
        docker_cli info >/dev/null 2>&1 && break
        sleep 1
    done
    if ! docker_cli info >/dev/null 2>&1; then
        tail -n 20 "$DOCKERD_LOG" >&2 || true
        die "dockerd did not answer within ${DOCKERD_WAIT_SECONDS}s (see $DOCKERD_LOG)"
    fi
    log "dockerd is up"
fi

# ------------------------------------------------------------ 2. the Lambda image
# A machine found offline before, with its image built, is not asked to pull again on every
# run (delete .tools/sam-config-env to check again).
if [[ "$(cat "$CONFIG_ENV_FILE" 2>/dev/null)" == offline ]] \
    && docker_cli image inspect "$SAM_LOCAL_IMAGE" >/dev/null 2>&1 \
    && ! docker_cli image inspect "$STANDARD_IMAGE" >/dev/null 2>&1; then
    config_env=offline
    log "offline before, and $SAM_LOCAL_IMAGE is here: samconfig's offline environment"
elif docker_cli image inspect "$STANDARD_IMAGE" >/dev/null 2>&1 \
    || docker_cli pull -q "$STANDARD_IMAGE" >/dev/null 2>&1; then
    config_env=default
    log "AWS's image $STANDARD_IMAGE is available: samconfig's default environment"
else
    config_env=offline
    log "no container registry: the offline image and samconfig's offline environment"
fi

if [[ $config_env == offline && "$(uname -s)" == Linux ]]; then
    # A dockerd on a machine without a registry (ours, or one found running): packets
    # arriving on the bridge are never forwarded.
    need_root "closing the Docker bridge"
    bridge_if="$(docker_cli network inspect bridge \
        -f '{{index .Options "com.docker.network.bridge.name"}}' 2>/dev/null || true)"
    bridge_if="${bridge_if:-docker0}"
    if [[ -e "/proc/sys/net/ipv4/conf/$bridge_if/forwarding" ]]; then
        echo 0 >"/proc/sys/net/ipv4/conf/$bridge_if/forwarding"
        log "IPv4 forwarding off on $bridge_if (containers reach this machine only)"
    else
        die "bridge interface $bridge_if not found"
    fi
fi
# ------------------------------------------------------------ the offline image
# Remove a build dir, unmounting first anything debootstrap left mounted in it.
cleanup_workdir() {
    local work="$1" mnt
    [[ -n "$work" && -d "$work" ]] || return 0
    awk -v w="$work/" 'index($2, w) == 1 {print $2}' /proc/mounts | sort -r | while read -r mnt; do
        umount -l "$mnt" 2>/dev/null || true
    done
    rm -rf --one-file-system "$work"
}

build_image() {
    local work root start
    start=$SECONDS
    work="$(mktemp -d /var/tmp/sam-lambda-image.XXXXXX)"
    # shellcheck disable=SC2064
    trap "cleanup_workdir '$work'" EXIT
    root="$work/rootfs"

    log "debootstrap bookworm (minbase) into $root"
    debootstrap --variant=minbase \
        --include=ca-certificates,libssl3,libffi8,zlib1g,libsqlite3-0,libbz2-1.0,liblzma5,libexpat1,libuuid1,libreadline8,libncursesw6,libtinfo6 \
        bookworm "$root" "$DEBIAN_MIRROR" >"$work/debootstrap.log" 2>&1 \
        || { tail -n 30 "$work/debootstrap.log" >&2; die "debootstrap failed"; }

    log "copying Python 3.13 from $PYENV_PY to /var/lang"
    mkdir -p "$root/var/lang"
    tar -C "$PYENV_PY" -c \
        --exclude='./lib/python3.13/test' --exclude='./lib/python3.13/idlelib' \
        --exclude='./lib/python3.13/tkinter' --exclude='./lib/python3.13/turtledemo' \
        --exclude='./lib/libpython3.13.a' --exclude='__pycache__' \
        . | tar -C "$root/var/lang" -x
    # pyenv's binary has RUNPATH /root/.pyenv/...: make the loader find
    # libpython in /var/lang/lib without it.
    echo /var/lang/lib >"$root/etc/ld.so.conf.d/var-lang.conf"
    chroot "$root" /sbin/ldconfig
    ln -sf /var/lang/bin/python3.13 "$root/usr/local/bin/python3.13"
    ln -sf /var/lang/bin/python3.13 "$root/usr/local/bin/python3"
    chroot "$root" /var/lang/bin/python3.13 -c \
        'import ssl, sqlite3, ctypes, zlib, bz2, lzma, json, decimal, uuid, sys; assert sys.prefix == "/var/lang", sys.prefix' \
        || die "Python 3.13 does not run inside the new root"

    log "pip install $AWSLAMBDARIC_SPEC $BOTO3_SPEC into /var/runtime"
    mkdir -p "$root/var/runtime" "$root/var/task" "$root/opt"
    "$PYENV_PY/bin/python3.13" -m pip install -q --disable-pip-version-check --no-warn-script-location --root-user-action=ignore \
        --target "$root/var/runtime" "$AWSLAMBDARIC_SPEC" "$BOTO3_SPEC" 2> >(grep -v "^WARNING: Location" >&2)
    rm -rf "$root/var/runtime/bin"

    # Like the AWS image: RIE runs /var/runtime/bootstrap, which runs the
    # runtime interface client with the function's handler.
    cat >"$root/var/runtime/bootstrap" <<'EOF'
#!/bin/sh
# Stand-in for the AWS python3.13 runtime bootstrap (offline image).
export AWS_EXECUTION_ENV="${AWS_EXECUTION_ENV:-AWS_Lambda_python3.13}"
export PYTHONPATH="/var/task:/opt/python/lib/python3.13/site-packages:/opt/python:/var/runtime${PYTHONPATH:+:$PYTHONPATH}"
cd "${LAMBDA_TASK_ROOT:-/var/task}" 2>/dev/null || true
exec /var/lang/bin/python3.13 -m awslambdaric "${_HANDLER:-$AWS_LAMBDA_FUNCTION_HANDLER}"
EOF
    cat >"$root/lambda-entrypoint.sh" <<'EOF'
#!/bin/sh
# Same contract as the AWS image's entrypoint: the handler is the argument.
if [ $# -ne 1 ]; then
  echo "entrypoint requires the handler name to be the first argument" 1>&2
  exit 142
fi
export _HANDLER="$1"
if [ -z "${AWS_LAMBDA_RUNTIME_API}" ] && [ -x /var/rapid/aws-lambda-rie ]; then
  exec /var/rapid/aws-lambda-rie /var/runtime/bootstrap
fi
exec /var/runtime/bootstrap
EOF
    chmod 0755 "$root/var/runtime/bootstrap" "$root/lambda-entrypoint.sh"

    # Trim what a Lambda image does not need.
    rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/* \
        "$root"/usr/share/doc/* "$root"/usr/share/man/* "$root"/usr/share/info/* \
        "$root"/debootstrap

    log "docker import -> $SAM_LOCAL_IMAGE"
    tar -C "$root" --numeric-owner -c . | docker_cli import \
        --change 'ENV LANG=C.UTF-8' \
        --change 'ENV TZ=:/etc/localtime' \
        --change 'ENV PATH=/var/lang/bin:/usr/local/bin:/usr/bin/:/bin:/opt/bin:/usr/local/sbin:/usr/sbin:/sbin' \
        --change 'ENV LD_LIBRARY_PATH=/var/lang/lib:/lib64:/usr/lib64:/var/runtime:/var/runtime/lib:/var/task:/var/task/lib:/opt/lib' \
        --change 'ENV LAMBDA_TASK_ROOT=/var/task' \
        --change 'ENV LAMBDA_RUNTIME_DIR=/var/runtime' \
        --change 'WORKDIR /var/task' \
        --change 'ENTRYPOINT ["/lambda-entrypoint.sh"]' \
        - "$SAM_LOCAL_IMAGE" >/dev/null

    cleanup_workdir "$work"
    trap - EXIT

    # SAM derives "<repo>:rapid-<arch>" from the invoke image and, with
    # --skip-pull-image, never rebuilds it once it exists: drop stale ones so
    # the next `sam local` layers its RIE on this new image.
    local tag
    while read -r tag; do
        if [[ "$tag" == *:rapid-* ]]; then
            docker_cli image rm "$tag" >/dev/null && log "removed stale $tag"
        fi
    done < <(docker_cli image ls --format '{{.Repository}}:{{.Tag}}' "${SAM_LOCAL_IMAGE%:*}")
    log "image $SAM_LOCAL_IMAGE built in $((SECONDS - start))s"
}

if [[ $config_env == offline ]]; then
    if docker_cli image inspect "$SAM_LOCAL_IMAGE" >/dev/null 2>&1; then
        log "image $SAM_LOCAL_IMAGE already present"
    else
        command -v debootstrap >/dev/null 2>&1 || apt_install debootstrap
        need_root "building the offline image"
        build_image
    fi
fi
printf '%s\n' "$config_env" >"$CONFIG_ENV_FILE"

# ------------------------------------------------------------ 3. SAM CLI
if [[ -x "$SAM_VENV/bin/sam" ]]; then
    log "SAM CLI already in $SAM_VENV"
else
    log "installing aws-sam-cli==$SAM_CLI_VERSION into $SAM_VENV"
    rm -rf "$SAM_VENV"
    mkdir -p "$(dirname "$SAM_VENV")"
    "$PYENV_PY/bin/python3.13" -m venv "$SAM_VENV"
    "$SAM_VENV/bin/python" -m pip install -q --disable-pip-version-check \
        "aws-sam-cli==$SAM_CLI_VERSION" 2> >(grep -v "^WARNING: Location" >&2)
    [[ -x "$SAM_VENV/bin/sam" ]] || die "aws-sam-cli installed, but $SAM_VENV/bin/sam is missing"
fi

# ------------------------------------------------------------ summary
gw="$(gateway_ip)"
sam_version="$("$SAM_VENV/bin/sam" --version 2>/dev/null || echo '?')"
image="$STANDARD_IMAGE"
[[ $config_env == offline ]] && image="$SAM_LOCAL_IMAGE"
cat <<EOF
containers reach:      $gw
samconfig environment: $config_env (sam local ... --config-env $config_env)
invoke image:          $image
sam:                   $SAM_VENV/bin/sam ($sam_version)
EOF
