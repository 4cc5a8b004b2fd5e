#!/usr/bin/env bash
# The tool sandbox's engine for tests, CI and the benchmark (ADR 0014): a private Docker daemon that does not
# touch host networking, bubblewrap, the offline base image crewflow/tool-base:bookworm and a local registry.
#
#   sudo deploy/ci/sandbox-engine.sh        # idempotent; fast when everything already runs / is cached
#   export DOCKER_HOST=$(deploy/ci/sandbox-engine.sh --print-host)
#
# Steps (each skipped when already done):
#   1. apt-get installs docker.io, bubblewrap, debootstrap and docker-registry when missing (services are
#      not started by the packages: a temporary policy-rc.d refuses it, so no default bridge/iptables daemon);
#   2. starts dockerd as root with --bridge=none --iptables=false ... on unix:///run/crewflow-docker.sock,
#      data under /var/lib/crewflow-docker, log in /var/log/crewflow-dockerd.log, unless it already answers;
#   3. imports crewflow/tool-base:bookworm: debootstrap --variant=minbase --include=python3 from the Debian
#      mirror apt uses, the rootfs tarball cached in $CREWFLOW_SANDBOX_CACHE (/var/cache/crewflow-sandbox)
#      so re-runs only `docker import` it (or nothing, if the image exists);
#   4. starts the local registry (docker-registry) on 127.0.0.1:5000 for the push/pull-by-digest test;
#   5. prints the DOCKER_HOST to use (last line of stdout).
# Environment: CREWFLOW_SANDBOX_CACHE, CREWFLOW_SANDBOX_NO_REGISTRY=1 (skip step 4),
# CREWFLOW_SANDBOX_STATE (default /var/lib/crewflow-docker), CREWFLOW_SANDBOX_SOCK.
set -euo pipefail

SOCK=${CREWFLOW_SANDBOX_SOCK:-/run/crewflow-docker.sock}
HOST="unix://$SOCK"
STATE=${CREWFLOW_SANDBOX_STATE:-/var/lib/crewflow-docker}
EXEC_ROOT=/run/crewflow-docker
PIDFILE=/run/crewflow-dockerd.pid
LOG=/var/log/crewflow-dockerd.log
CACHE=${CREWFLOW_SANDBOX_CACHE:-/var/cache/crewflow-sandbox}
BASE_IMAGE=crewflow/tool-base:bookworm
REGISTRY_ADDR=127.0.0.1:5000
REGISTRY_DIR=/var/lib/crewflow-registry

if [[ ${1:-} == --print-host ]]; then
    echo "$HOST"
    exit 0
fi

say() { echo "sandbox-engine: $*" >&2; }

if [[ $(id -u) != 0 ]]; then
    say "must run as root (it installs packages and starts dockerd)"
    exit 1
fi

# 1. packages ------------------------------------------------------------------------------------------
missing=()
command -v dockerd >/dev/null || missing+=(docker.io)
command -v bwrap >/dev/null || missing+=(bubblewrap)
command -v debootstrap >/dev/null || missing+=(debootstrap)
if [[ -z ${CREWFLOW_SANDBOX_NO_REGISTRY:-} ]]; then
    command -v docker-registry >/dev/null || missing+=(docker-registry)
fi
if ((${#missing[@]})); then
    say "installing ${missing[*]}"
    placed_policy=""
    if [[ ! -e /usr/sbin/policy-rc.d ]]; then
        # refuse service starts during the install: Debian's docker.io would otherwise start a default
        # daemon (docker0 bridge, iptables rules) and docker-registry one listening on every interface
        printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
        chmod 755 /usr/sbin/policy-rc.d
        placed_policy=1
    fi
    trap '[[ -n $placed_policy ]] && rm -f /usr/sbin/policy-rc.d' EXIT
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >&2
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
    [[ -n $placed_policy ]] && rm -f /usr/sbin/policy-rc.d
    trap - EXIT
fi

# 2. dockerd -------------------------------------------------------------------------------------------
ping_engine() { curl -sf --max-time 2 --unix-socket "$SOCK" http://engine/_ping >/dev/null 2>&1; }

if ping_engine; then
    say "dockerd already answers on $HOST"
else
    mkdir -p "$STATE" "$EXEC_ROOT" "$(dirname "$LOG")"
    if [[ -f $PIDFILE ]] && ! kill -0 "$(cat "$PIDFILE")" 2>/dev/null; then
        rm -f "$PIDFILE"  # stale, from a daemon that is gone
    fi
    say "starting dockerd on $HOST (log: $LOG)"
    setsid dockerd \
        --data-root "$STATE" --exec-root "$EXEC_ROOT" --host "$HOST" --pidfile "$PIDFILE" \
        --iptables=false --ip-forward=false --ip-masq=false --bridge=none \
        >>"$LOG" 2>&1 </dev/null &
    for _ in $(seq 1 120); do
        ping_engine && break
        sleep 0.25
    done
    if ! ping_engine; then
        say "dockerd did not answer within 30 s; the end of $LOG:"
        tail -n 30 "$LOG" >&2
        exit 1
    fi
fi
export DOCKER_HOST=$HOST

# 3. base image ----------------------------------------------------------------------------------------
debian_mirror() {
    # the mirror apt uses for the main archive: deb822 sources first, then the one-line format
    local uri=""
    if compgen -G "/etc/apt/sources.list.d/*.sources" >/dev/null; then
        uri=$(awk '/^URIs:/ {for (i = 2; i <= NF; i++) if ($i !~ /security/) {print $i; exit}}' \
            /etc/apt/sources.list.d/*.sources | head -n 1)
    fi
    if [[ -z $uri && -f /etc/apt/sources.list ]]; then
        uri=$(awk '$1 == "deb" && $0 !~ /security/ {for (i = 2; i <= NF; i++) if ($i ~ /^https?:/) {print $i; exit}}' \
            /etc/apt/sources.list | head -n 1)
    fi
    echo "${uri:-http://deb.debian.org/debian}"
}

if docker image inspect "$BASE_IMAGE" >/dev/null 2>&1; then
    say "$BASE_IMAGE present"
else
    mkdir -p "$CACHE"
    tarball="$CACHE/tool-base-bookworm.tar"
    if [[ ! -s $tarball ]]; then
        mirror=$(debian_mirror)
        rootfs=$(mktemp -d /var/tmp/crewflow-rootfs.XXXXXX)
        say "debootstrap bookworm from $mirror (about a minute)"
        debootstrap --variant=minbase --include=python3 bookworm "$rootfs" "$mirror" >&2
        rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
        tar -C "$rootfs" -cf "$tarball.part" .
        mv "$tarball.part" "$tarball"
        rm -rf "$rootfs"
    fi
    say "importing $BASE_IMAGE from $tarball"
    docker import --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change 'CMD ["/usr/bin/python3"]' "$tarball" "$BASE_IMAGE" >&2
fi

# 4. registry ------------------------------------------------------------------------------------------
if [[ -z ${CREWFLOW_SANDBOX_NO_REGISTRY:-} ]]; then
    if curl -sf --max-time 2 "http://$REGISTRY_ADDR/v2/" >/dev/null 2>&1; then
        say "registry already answers on $REGISTRY_ADDR"
    else
        mkdir -p "$REGISTRY_DIR/data"
        cat >"$REGISTRY_DIR/config.yml" <<EOF
version: 0.1
log:
  level: warn
storage:
  filesystem:
    rootdirectory: $REGISTRY_DIR/data
  delete:
    enabled: true
http:
  addr: $REGISTRY_ADDR
EOF
        say "starting docker-registry on $REGISTRY_ADDR"
        setsid docker-registry serve "$REGISTRY_DIR/config.yml" >>/var/log/crewflow-registry.log 2>&1 </dev/null &
        for _ in $(seq 1 40); do
            curl -sf --max-time 1 "http://$REGISTRY_ADDR/v2/" >/dev/null 2>&1 && break
            sleep 0.25
        done
        curl -sf --max-time 2 "http://$REGISTRY_ADDR/v2/" >/dev/null || {
            say "the registry did not answer; see /var/log/crewflow-registry.log"
            exit 1
        }
    fi
fi

# 5. where to find it ----------------------------------------------------------------------------------
say "ready: export DOCKER_HOST=$HOST CREWFLOW_TOOL_REGISTRY=$REGISTRY_ADDR"
echo "$HOST"
