#!/usr/bin/env bash
# Private Docker engine for tests and CI.
#
#   .ci/dockerd.sh start   install Debian's docker.io if dockerd is missing,
#                          start (or reuse) a private containerd + dockerd,
#                          print DOCKER_HOST=unix://<sock> as the last line
#   .ci/dockerd.sh stop    stop them (bounded, then SIGKILL), kill leftover
#                          shims/containers, unmount leftovers; idempotent
#   .ci/dockerd.sh status  exit 0 and print DOCKER_HOST=... if it answers
#
# Usage from another script (set -e):
#   line=$(bash .ci/dockerd.sh start)   # non-zero exit (log tail on stderr) on failure
#   export "$line"                      # DOCKER_HOST=unix:///tmp/runner-ci-docker/d.sock
#   trap 'bash .ci/dockerd.sh stop' EXIT
# Env: RUNNER_DOCKER_DIR, RUNNER_DOCKER_START_TIMEOUT (30 s),
#      RUNNER_DOCKER_STOP_TIMEOUT (20 s; dockerd stops containers first).
#
# Everything lives under $RUNNER_DOCKER_DIR (default /tmp/runner-ci-docker):
#   d.sock  dockerd API socket      dockerd.pid / dockerd.log
#   c.sock  containerd socket       containerd.pid / containerd.log
#   data/   dockerd --data-root     x/  dockerd --exec-root
#   ctr/    containerd root+state   daemon.json / containerd.toml
# The data root is kept across stop/start (images stay cached).
# Progress goes to stderr; stdout carries only the DOCKER_HOST line.
set -euo pipefail
export PATH=$PATH:/usr/local/sbin:/usr/sbin:/sbin

DIR=${RUNNER_DOCKER_DIR:-/tmp/runner-ci-docker}
SOCK=$DIR/d.sock
CSOCK=$DIR/c.sock
DPID=$DIR/dockerd.pid
CPID=$DIR/containerd.pid
DLOG=$DIR/dockerd.log
CLOG=$DIR/containerd.log
START_TIMEOUT=${RUNNER_DOCKER_START_TIMEOUT:-30}
STOP_TIMEOUT=${RUNNER_DOCKER_STOP_TIMEOUT:-20}

log() { printf 'dockerd.sh: %s\n' "$*" >&2; }

need_root() {
    if [ "$(id -u)" != 0 ]; then
        log "must run as root"
        exit 1
    fi
}

# --- install ---------------------------------------------------------------

POLICY=/usr/sbin/policy-rc.d
POLICY_BACKUP=""
POLICY_OURS=0
restore_policy() {
    [ "$POLICY_OURS" = 1 ] || return 0
    if [ -n "$POLICY_BACKUP" ]; then
        mv -f "$POLICY_BACKUP" "$POLICY"
    else
        rm -f "$POLICY"
    fi
    POLICY_OURS=0
}

apt_install() {
    # Keep the packages' maintainer scripts from starting system services
    # (docker, containerd): a policy-rc.d exiting 101 makes invoke-rc.d and
    # deb-systemd-invoke skip the start. Any existing policy-rc.d is restored.
    if [ -e "$POLICY" ]; then
        POLICY_BACKUP=$(mktemp "$POLICY.XXXXXX")
        cp -p "$POLICY" "$POLICY_BACKUP"
    fi
    POLICY_OURS=1
    trap restore_policy EXIT
    printf '#!/bin/sh\nexit 101\n' >"$POLICY"
    chmod 755 "$POLICY"

    local apt=(apt-get -y -q --no-install-recommends
        -o DPkg::Lock::Timeout=120
        -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold)
    export DEBIAN_FRONTEND=noninteractive
    if ! "${apt[@]}" install "$@" </dev/null >&2; then
        log "apt-get install failed; running apt-get update and retrying"
        apt-get -q -o DPkg::Lock::Timeout=120 update </dev/null >&2
        "${apt[@]}" install "$@" </dev/null >&2
    fi
    restore_policy
    trap - EXIT
}

ensure_installed() {
    # docker.io depends on containerd, runc and tini (tini-static is linked
    # as /usr/bin/docker-init, which `docker run --init` bind-mounts).
    local missing=()
    command -v dockerd >/dev/null 2>&1 || missing+=(docker.io)
    command -v containerd >/dev/null 2>&1 || missing+=(containerd)
    command -v runc >/dev/null 2>&1 || missing+=(runc)
    command -v docker-init >/dev/null 2>&1 || missing+=(tini)
    command -v docker >/dev/null 2>&1 || missing+=(docker.io)
    if [ ${#missing[@]} -gt 0 ]; then
        log "installing: ${missing[*]}"
        apt_install "${missing[@]}"
    fi
}

# --- helpers ---------------------------------------------------------------

# true if pid exists and is not a zombie (this machine's pid 1 reaps
# orphans lazily, so a killed daemon can linger as a zombie for a while)
alive() {
    local st
    st=$(sed 's/^.*) //' "/proc/$1/stat" 2>/dev/null) || return 1
    [ -n "$st" ] && [ "${st%% *}" != Z ]
}

# pid from a pidfile if that process is alive and its comm is $2
live_pid() {
    local file=$1 comm=$2 pid
    [ -s "$file" ] || return 1
    pid=$(tr -dc '0-9' <"$file")
    [ -n "$pid" ] && alive "$pid" || return 1
    [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$comm" ] || return 1
    echo "$pid"
}

answers() {
    [ -S "$SOCK" ] && timeout 5 docker -H "unix://$SOCK" version \
        --format '{{.Server.Version}}' >/dev/null 2>&1
}

# pids of daemons/shims (by comm) whose command line mentions $DIR/
pids_under_dir() {
    local p cmd comm
    for p in /proc/[0-9]*; do
        p=${p#/proc/}
        comm=$(cat "/proc/$p/comm" 2>/dev/null) || continue
        case $comm in
        dockerd | containerd | containerd-shim* | runc | docker-proxy) ;;
        *) continue ;;
        esac
        cmd=$(tr '\0' ' ' <"/proc/$p/cmdline" 2>/dev/null) || continue
        case $cmd in *"$DIR/"*) echo "$p" ;; esac
    done
}

children_of() {
    # field 4 of /proc/PID/stat is the ppid; comm (field 2) may contain spaces
    awk -v want="$1" '{ sub(/^.*\) /, ""); if ($2 == want) { f = FILENAME; gsub(/[^0-9]/, "", f); print f } }' \
        /proc/[0-9]*/stat 2>/dev/null || true
}

# SIGTERM, wait up to $2 seconds, then SIGKILL
stop_pid() {
    local pid=$1 limit=$2 name=$3 i
    kill -TERM "$pid" 2>/dev/null || return 0
    for ((i = 0; i < limit * 10; i++)); do
        alive "$pid" || return 0
        sleep 0.1
    done
    log "$name (pid $pid) still running after ${limit}s; SIGKILL"
    kill -KILL "$pid" 2>/dev/null || true
    for ((i = 0; i < 50; i++)); do
        alive "$pid" || return 0
        sleep 0.1
    done
}

fail_start() {
    log "$*"
    if [ -f "$CLOG" ]; then
        log "--- tail of $CLOG ---"
        tail -n 5 "$CLOG" >&2
    fi
    if [ -f "$DLOG" ]; then
        log "--- tail of $DLOG ---"
        tail -n 40 "$DLOG" >&2
    fi
    # leave nothing half-started behind
    [ -z "${STARTING_PID:-}" ] || kill -KILL "$STARTING_PID" 2>/dev/null || true
    cmd_stop >/dev/null 2>&1 || true
    exit 1
}

# --- start / stop ----------------------------------------------------------

start_containerd() {
    if live_pid "$CPID" containerd >/dev/null && [ -S "$CSOCK" ]; then
        return 0
    fi
    mkdir -p "$DIR/ctr/root" "$DIR/ctr/state"
    cat >"$DIR/containerd.toml" <<EOF
version = 2
root = "$DIR/ctr/root"
state = "$DIR/ctr/state"
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = "$CSOCK"
[ttrpc]
  address = "$CSOCK.ttrpc"
[debug]
  address = "$DIR/c-debug.sock"
EOF
    rm -f "$CSOCK" "$CSOCK.ttrpc" "$DIR/c-debug.sock"
    setsid containerd --config "$DIR/containerd.toml" </dev/null >>"$CLOG" 2>&1 &
    echo $! >"$CPID"
    local i
    for ((i = 0; i < START_TIMEOUT * 10; i++)); do
        [ -S "$CSOCK" ] && return 0
        live_pid "$CPID" containerd >/dev/null || fail_start "containerd exited during start"
        sleep 0.1
    done
    fail_start "containerd did not create $CSOCK within ${START_TIMEOUT}s"
}

cmd_start() {
    need_root
    if [ ${#SOCK} -gt 100 ]; then
        log "socket path too long (${#SOCK} > 100): $SOCK; set a shorter RUNNER_DOCKER_DIR"
        exit 1
    fi
    ensure_installed
    mkdir -p "$DIR"
    chmod 711 "$DIR"

    local pid i
    if pid=$(live_pid "$DPID" dockerd); then
        # ours is running: reuse it once it answers
        for ((i = 0; i < START_TIMEOUT * 10; i++)); do
            if answers; then
                log "reusing dockerd pid $pid"
                echo "DOCKER_HOST=unix://$SOCK"
                return 0
            fi
            alive "$pid" || break
            sleep 0.1
        done
        log "dockerd pid $pid does not answer; restarting it"
        cmd_stop
    fi

    start_containerd
    echo '{}' >"$DIR/daemon.json"
    rm -f "$SOCK" "$DPID"
    {
        echo "=== $(date -u +%FT%TZ) dockerd.sh start"
    } >>"$DLOG"
    setsid dockerd \
        --config-file "$DIR/daemon.json" \
        --containerd "$CSOCK" \
        --data-root "$DIR/data" \
        --exec-root "$DIR/x" \
        -H "unix://$SOCK" \
        --pidfile "$DPID" \
        --storage-driver overlay2 \
        --exec-opt native.cgroupdriver=cgroupfs \
        --bridge=none --iptables=false --ip-forward=false --ip-masq=false \
        </dev/null >>"$DLOG" 2>&1 &
    pid=$!
    STARTING_PID=$pid
    for ((i = 0; i < START_TIMEOUT * 10; i++)); do
        if answers; then
            echo "DOCKER_HOST=unix://$SOCK"
            return 0
        fi
        alive "$pid" || fail_start "dockerd exited during start"
        sleep 0.1
    done
    fail_start "dockerd did not answer on $SOCK within ${START_TIMEOUT}s"
}

cmd_stop() {
    need_root
    local pid p c
    if pid=$(live_pid "$DPID" dockerd); then
        log "stopping dockerd pid $pid"
        # dockerd stops running containers (their stop timeout, 10 s by
        # default) before it exits, so allow a little more than that.
        stop_pid "$pid" "$STOP_TIMEOUT" dockerd
    fi
    if pid=$(live_pid "$CPID" containerd); then
        log "stopping containerd pid $pid"
        stop_pid "$pid" 10 containerd
    fi
    # Whatever is left that refers to our directory: containerd shims
    # (containerd-shim-runc-v2 ... -address $DIR/c.sock) and strays. A shim
    # is the parent of its container's init; SIGKILL of that init kills the
    # container's whole pid namespace.
    local ids=() cmd
    for p in $(pids_under_dir); do
        cmd=$(tr '\0' ' ' <"/proc/$p/cmdline" 2>/dev/null) || continue
        case $cmd in *" -id "*) cmd=${cmd#* -id }; ids+=("${cmd%% *}") ;; esac
        for c in $(children_of "$p"); do
            kill -KILL "$c" 2>/dev/null || true
        done
        log "killing leftover pid $p: $(tr '\0' ' ' <"/proc/$p/cmdline" 2>/dev/null | cut -c1-120)"
        kill -KILL "$p" 2>/dev/null || true
    done
    # cgroups of containers killed that way (rmdir only removes empty ones)
    if [ ${#ids[@]} -gt 0 ]; then
        sleep 0.2
        for c in "${ids[@]}"; do
            [ -n "$c" ] || continue
            find /sys/fs/cgroup -maxdepth 4 -type d -name "$c" -exec rmdir {} + 2>/dev/null || true
            # containerd 1.6 puts shim sockets at /run/containerd/s/
            # sha256(<containerd address>/<namespace>/<id>); a killed shim leaves it
            rm -f "/run/containerd/s/$(printf '%s' "$CSOCK/moby/$c" | sha256sum | cut -d' ' -f1)"
        done
    fi
    # Mounts left behind by a killed daemon (overlay, shm, netns), deepest first.
    if [ -d "$DIR" ]; then
        awk -v d="$DIR/" 'index($2, d) == 1 { print $2 }' /proc/self/mounts | sort -r |
            while read -r m; do
                umount -l "$m" 2>/dev/null || true
            done
    fi
    rm -f "$DPID" "$CPID" "$SOCK" "$CSOCK" "$CSOCK.ttrpc" "$DIR/c-debug.sock"
}

cmd_status() {
    if live_pid "$DPID" dockerd >/dev/null && answers; then
        echo "DOCKER_HOST=unix://$SOCK"
    else
        log "not running"
        return 1
    fi
}

case ${1:-} in
start) cmd_start ;;
stop) cmd_stop ;;
status) cmd_status ;;
*)
    echo "usage: $0 start|stop|status   (env RUNNER_DOCKER_DIR, default /tmp/runner-ci-docker)" >&2
    exit 2
    ;;
esac
