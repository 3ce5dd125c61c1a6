#!/usr/bin/env bash
# A single-node SLURM on this machine, for testing the workflow's SLURM profile for real.
#
#   scripts/local_slurm.sh install   Debian packages slurmctld, slurmd, slurm-client, munge
#   scripts/local_slurm.sh start     write /etc/slurm/slurm.conf, start munged, slurmctld, slurmd
#   scripts/local_slurm.sh stop      cancel every job, stop the three daemons
#
# Needs root and no systemd: the daemons run in the foreground of detached sessions and their
# pids are kept in the state folder. Everything talks over 127.0.0.1, and the daemons listen
# only there when the host name resolves to a loopback address. The node is declared
# larger than the machine (config_overrides) with fake GPUs (gres.conf entries backed by
# character devices), so the real profile's requests fit; jobs are not confined, and the toy
# preset runs on the CPU whatever GPUs a job was granted.
#
# Environment: LOCAL_SLURM_DIR (state, logs, pids; default /var/tmp/dspo-local-slurm),
# LOCAL_SLURM_CPUS (default 32), LOCAL_SLURM_GPUS (default 4), LOCAL_SLURM_MEM_MB
# (default 512000). Partitions: gpu (the default) and cpu, over the same node.
set -euo pipefail

STATE=${LOCAL_SLURM_DIR:-/var/tmp/dspo-local-slurm}
CPUS=${LOCAL_SLURM_CPUS:-32}
GPUS=${LOCAL_SLURM_GPUS:-4}
MEM_MB=${LOCAL_SLURM_MEM_MB:-512000}
CONF_DIR=/etc/slurm
# Written into our slurm.conf; a slurm.conf without it belongs to someone else and is kept.
MARKER="# dspo local test cluster"
PACKAGES=(slurmctld slurmd slurm-client munge)
NODE=$(hostname -s)

die() {
    echo "local_slurm: $*" >&2
    exit 1
}

require_root() {
    [[ $(id -u) -eq 0 ]] || die "needs root (it installs packages and starts daemons)"
}

install_packages() {
    require_root
    command -v apt-get >/dev/null || die "apt-get not found: install ${PACKAGES[*]} by hand"
    apt-get update -qq
    # Package scripts try to start services; without systemd that only prints warnings.
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${PACKAGES[@]}"
}

# The daemons bind to the address their host name resolves to instead of every interface;
# that is loopback only where the name resolves to 127.x (as in a container).
bind_parameters() {
    local address
    address=$(getent hosts "$NODE" | awk '{print $1; exit}')
    if [[ $address == 127.* ]]; then
        echo "CommunicationParameters=NoCtldInAddrAny,NoInAddrAny"
    else
        echo "local_slurm: $NODE resolves to '$address': ports 6817/6818 listen on every" \
            "interface (messages are still authenticated by munge)" >&2
    fi
}

write_config() {
    if [[ -f $CONF_DIR/slurm.conf ]] && ! grep -qx "$MARKER" "$CONF_DIR/slurm.conf"; then
        die "$CONF_DIR/slurm.conf exists and is not ours; refusing to overwrite it"
    fi
    mkdir -p "$CONF_DIR" "$STATE"/{ctld,spool,log,run,dev}
    local last=$((GPUS - 1)) i
    for ((i = 0; i < GPUS; i++)); do
        # Major/minor of /dev/null: slurmd only needs the files to exist.
        [[ -e $STATE/dev/gpu$i ]] || mknod "$STATE/dev/gpu$i" c 1 3
    done
    cat >"$CONF_DIR/slurm.conf" <<EOF
$MARKER
# Written by scripts/local_slurm.sh start; removed by scripts/local_slurm.sh stop.
ClusterName=dspo-local
SlurmctldHost=$NODE(127.0.0.1)
AuthType=auth/munge
CredType=cred/munge
SlurmUser=root
SlurmdUser=root
$(bind_parameters)
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/spool
SlurmctldPidFile=$STATE/run/slurmctld.pid
SlurmdPidFile=$STATE/run/slurmd.pid
SlurmctldLogFile=$STATE/log/slurmctld.log
SlurmdLogFile=$STATE/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SwitchType=switch/none
MpiDefault=none
SchedulerType=sched/builtin
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
SlurmdParameters=config_overrides
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
# No accounting database: finished jobs go to a text file that 'sacct --completion' reads.
JobCompType=jobcomp/filetxt
JobCompLoc=$STATE/log/jobcomp.txt
ReturnToService=2
# Finished jobs stay in squeue for an hour: Snakemake reads their state from there.
MinJobAge=3600
GresTypes=gpu
NodeName=$NODE NodeAddr=127.0.0.1 CPUs=$CPUS RealMemory=$MEM_MB Gres=gpu:fake:$GPUS State=UNKNOWN
PartitionName=gpu Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
PartitionName=cpu Nodes=$NODE MaxTime=INFINITE State=UP
EOF
    echo "NodeName=$NODE Name=gpu Type=fake File=$STATE/dev/gpu[0-$last]" >"$CONF_DIR/gres.conf"
}

# Runs a daemon in the foreground of its own session, detached from the caller's terminal and
# pipes, and records its pid.
spawn() {
    local name=$1
    shift
    setsid "$@" </dev/null >"$STATE/log/$name.out" 2>&1 &
    echo $! >"$STATE/run/$name.launched"
}

start_munge() {
    mkdir -p /run/munge
    chown munge:munge /run/munge
    [[ -f /etc/munge/munge.key ]] || runuser -u munge -- mungekey --create
    spawn munged runuser -u munge -- munged --foreground
    local i
    for ((i = 0; i < 20; i++)); do
        munge --no-input >/dev/null 2>&1 && return 0
        sleep 0.5
    done
    die "munged did not start (see $STATE/log/munged.out)"
}

wait_for_node() {
    local i
    for ((i = 0; i < 60; i++)); do
        if [[ $(sinfo --noheader --nodes "$NODE" --format %t 2>/dev/null | head -1) == idle ]]; then
            return 0
        fi
        sleep 1
    done
    tail -n 20 "$STATE"/log/*.log "$STATE"/log/*.out >&2 || true
    die "node $NODE did not become idle within 60 s (logs above, in $STATE/log)"
}

start() {
    require_root
    command -v slurmctld >/dev/null || die "SLURM is not installed: run '$0 install' first"
    stop_daemons
    write_config
    rm -f "$STATE/log/jobcomp.txt"
    start_munge
    # -c: start from an empty state, so jobs of an earlier run do not come back.
    spawn slurmctld slurmctld -D -c
    spawn slurmd slurmd -D
    wait_for_node
    sinfo
}

stop_daemons() {
    local name pid i
    for name in slurmd slurmctld munged; do
        [[ -f $STATE/run/$name.launched ]] || continue
        pid=$(cat "$STATE/run/$name.launched")
        kill "$pid" 2>/dev/null || true
        for ((i = 0; i < 20; i++)); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.5
        done
        rm -f "$STATE/run/$name.launched"
    done
}

stop() {
    require_root
    # Steps outlive slurmd, so cancel the jobs while the controller still answers.
    if [[ -f $STATE/run/slurmctld.launched ]]; then
        scancel --full --quiet --user root 2>/dev/null || true
        sleep 1
    fi
    stop_daemons
    if [[ -f $CONF_DIR/slurm.conf ]] && grep -qx "$MARKER" "$CONF_DIR/slurm.conf"; then
        rm -f "$CONF_DIR/slurm.conf" "$CONF_DIR/gres.conf"
    fi
}

case ${1:-} in
install) install_packages ;;
start) start ;;
stop) stop ;;
*) die "usage: $0 install|start|stop" ;;
esac
