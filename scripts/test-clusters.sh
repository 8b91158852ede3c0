#!/usr/bin/env bash
# Real services for the integration tests, started by hand on this machine
# (Debian 12, root, no systemd): PostgreSQL, SLURM (with slurmdbd accounting),
# Grid Engine and a private sshd.
#
#   scripts/test-clusters.sh up|down|status|env [postgres|slurm|sge|ssh|k8s|all]
#
#   up      install the Debian packages that are missing, write the configs,
#           start the daemons and wait until each service answers; cheap and
#           idempotent when everything is already up
#   down    stop the daemons (packages, data and configs stay)
#   status  say which services are up (exit status 1 if any asked for is down)
#   env     print the KEY=VALUE lines of the services that are up
#
#   scripts/test-clusters.sh stop-daemon|start-daemon slurmctld|slurmdbd
#
#   stop-daemon   stop one SLURM daemon of a running cluster (fault tests)
#   start-daemon  start it again and wait until it answers
#   (both take $STATE_DIR/.lock, unless JOBBRIDGE_TEST_CLUSTERS_LOCKED=1 says that
#   the caller holds it, as it should for as long as the daemon is meant to stay down)
#
# For every service that is up, $STATE_DIR/<service>.env holds KEY=VALUE
# lines (no quotes, no export) that the test suite reads.
#
# Logs: /var/tmp/jobbridge-test/{postgres/postgres.log,ssh/sshd.log,out/*.out},
# /var/log/slurm/*.log, /var/log/munge/munged.log, /var/log/mysql/error.log,
# /var/spool/gridengine/qmaster/messages, /var/spool/gridengine/execd/*/messages.
#
# Settings (environment): JOBBRIDGE_TEST_POSTGRES_PORT (5433),
# JOBBRIDGE_TEST_SSH_PORT (2222), JOBBRIDGE_TEST_READY_TIMEOUT (90 seconds).

set -Eeuo pipefail
trap 'printf "[test-clusters] ERROR: command failed (line %s): %s\n" "$LINENO" "$BASH_COMMAND" >&2' ERR

readonly STATE_DIR=/var/tmp/jobbridge-test
readonly TEST_USER=jbtest
readonly ALL_SERVICES=(postgres slurm sge ssh k8s)
readonly READY_TIMEOUT=${JOBBRIDGE_TEST_READY_TIMEOUT:-90}
readonly OUT_DIR=$STATE_DIR/out

SHORT_HOST=$(hostname -s)
NCPUS=$(nproc)
readonly SHORT_HOST NCPUS

# PostgreSQL: a private cluster, owned by the postgres user, on loopback.
readonly PG_PORT=${JOBBRIDGE_TEST_POSTGRES_PORT:-5433}
readonly PG_DIR=$STATE_DIR/postgres
readonly PG_DATA=$PG_DIR/data
readonly PG_SOCKET_DIR=$PG_DIR/run
readonly PG_LOG=$PG_DIR/postgres.log
readonly PG_USER=jobbridge
readonly PG_PASSWORD=jobbridge
readonly PG_DATABASE=jobbridge_test

# SLURM, with munge, MariaDB and slurmdbd. The configs live at the default
# location so that every user (root, jbtest over ssh) finds them.
readonly SLURM_CONF_DIR=/etc/slurm
readonly SLURM_CLUSTER=jobbridge
readonly SLURM_ACCOUNT=jobbridge
readonly SLURM_PARTITION=debug
readonly SLURM_RUN_DIR=/run/slurm
readonly SLURM_LOG_DIR=/var/log/slurm
readonly SLURM_DB_NAME=slurm_acct_db
readonly SLURM_DB_USER=slurm
readonly SLURM_DB_PASSWORD=slurmdbpass
readonly MUNGE_RUN_DIR=/run/munge
readonly MUNGE_PIDFILE=$MUNGE_RUN_DIR/munged.pid
readonly MUNGE_LOG=/var/log/munge/munged.log
readonly MYSQL_DATA=/var/lib/mysql
readonly MYSQL_RUN_DIR=/run/mysqld
readonly MYSQL_SOCKET=$MYSQL_RUN_DIR/mysqld.sock
readonly MYSQL_PIDFILE=$MYSQL_RUN_DIR/mysqld.pid
readonly MYSQL_LOG=/var/log/mysql/error.log

# Grid Engine (Debian layout).
readonly SGE_ROOT=/var/lib/gridengine
readonly SGE_CELL=default
readonly SGE_QUEUE=all.q
readonly SGE_PE=smp
readonly SGE_SPOOL=/var/spool/gridengine
readonly SGE_QMASTER_PIDFILE=$SGE_SPOOL/qmaster/qmaster.pid
readonly SGE_QMASTER_LOG=$SGE_SPOOL/qmaster/messages

# ssh: a private sshd with its own config, keys and log.
readonly SSH_PORT=${JOBBRIDGE_TEST_SSH_PORT:-2222}
readonly SSH_DIR=$STATE_DIR/ssh
readonly SSH_CONFIG=$SSH_DIR/sshd_config
readonly SSH_HOST_KEY=$SSH_DIR/ssh_host_ed25519_key
readonly SSH_CLIENT_KEY=$SSH_DIR/id_ed25519
readonly SSH_AUTH_DIR=$SSH_DIR/authorized_keys
readonly SSH_KNOWN_HOSTS=$SSH_DIR/known_hosts
readonly SSH_PIDFILE=$SSH_DIR/sshd.pid
readonly SSH_LOG=$SSH_DIR/sshd.log

export DEBIAN_FRONTEND=noninteractive
export SGE_ROOT SGE_CELL

APT_UPDATED=0
POLICY_RC_CREATED=0

# --------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------

log() { printf '[test-clusters] %s\n' "$*" >&2; }

die() {
    printf '[test-clusters] ERROR: %s\n' "$*" >&2
    exit 1
}

# die with the tail of one or more log files
die_with_logs() {
    local message=$1 logfile
    shift
    printf '[test-clusters] ERROR: %s\n' "$message" >&2
    for logfile in "$@"; do
        if [[ -r $logfile ]]; then
            printf -- '----- last lines of %s -----\n' "$logfile" >&2
            tail -n 30 "$logfile" >&2 || true
        fi
    done
    exit 1
}

cleanup() {
    if [[ $POLICY_RC_CREATED == 1 ]]; then
        rm -f /usr/sbin/policy-rc.d
    fi
}
trap cleanup EXIT

is_installed() {
    [[ $(dpkg-query -W -f='${db:Status-Status}' "$1" 2>/dev/null) == installed ]]
}

# Install the packages that are missing. Package scripts must not start any
# service (no init system here, and the daemons are started by this script),
# so a policy-rc.d denying starts is put in place if the machine has none.
ensure_packages() {
    local pkg missing=()
    for pkg in "$@"; do
        is_installed "$pkg" || missing+=("$pkg")
    done
    ((${#missing[@]} == 0)) && return 0

    log "installing ${missing[*]}"
    if [[ ! -e /usr/sbin/policy-rc.d ]]; then
        printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
        chmod 755 /usr/sbin/policy-rc.d
        POLICY_RC_CREATED=1
    fi
    if [[ $APT_UPDATED == 0 ]]; then
        apt-get -o DPkg::Lock::Timeout=600 update -q >&2
        APT_UPDATED=1
    fi
    apt-get -o DPkg::Lock::Timeout=600 install -y -q --no-install-recommends "${missing[@]}" >&2
}

# Write stdin to DEST (MODE, OWNER as user:group) only if the content
# differs, so that a second run touches nothing. Returns 0 when the file
# changed, 1 when it was already up to date.
write_file() {
    local dest=$1 mode=$2 owner=$3 content tmp
    content=$(cat && echo x)
    content=${content%x}
    if [[ -f $dest && $(cat "$dest" && echo x) == "${content}x" ]]; then
        if [[ $(stat -c '%a %U:%G' "$dest") != "$mode $owner" ]]; then
            chmod "$mode" "$dest"
            chown "$owner" "$dest"
        fi
        return 1
    fi
    tmp=$(mktemp "$dest.XXXXXX")
    printf '%s' "$content" >"$tmp"
    chmod "$mode" "$tmp"
    chown "$owner" "$tmp"
    mv -f "$tmp" "$dest"
    return 0
}

# ensure_dir MODE OWNER DIR...: create the directories and fix their mode
# and owner (user:group), touching only what differs.
ensure_dir() {
    local mode=$1 owner=$2 dir
    shift 2
    for dir in "$@"; do
        [[ -d $dir ]] || mkdir -p "$dir"
    done
    ensure_perm "$mode" "$owner" "$@"
}

# ensure_perm MODE OWNER PATH...: fix the mode and owner of existing paths.
ensure_perm() {
    local mode=$1 owner=$2 path
    shift 2
    for path in "$@"; do
        [[ -e $path ]] || continue
        if [[ $(stat -c '%a %U:%G' "$path") != "$mode $owner" ]]; then
            chmod "$mode" "$path"
            chown "$owner" "$path"
        fi
    done
}

# ensure_owner OWNER PATH...: fix the owner of existing paths.
ensure_owner() {
    local owner=$1 path
    shift
    for path in "$@"; do
        [[ ! -e $path || $(stat -c '%U:%G' "$path") == "$owner" ]] || chown "$owner" "$path"
    done
}

# PID of a live (non-zombie) process named COMM whose pid is the first line
# of PIDFILE; fails if there is none (missing or stale pid file).
pid_of() {
    local pidfile=$1 comm=$2 pid="" state
    [[ -r $pidfile ]] || return 1
    read -r pid <"$pidfile" || [[ -n $pid ]] || return 1
    [[ $pid =~ ^[0-9]+$ ]] || return 1
    [[ -r /proc/$pid/comm && $(<"/proc/$pid/comm") == "$comm" ]] 2>/dev/null || return 1
    read -r _ _ state _ <"/proc/$pid/stat" 2>/dev/null || return 1
    [[ $state != Z ]] || return 1
    echo "$pid"
}

is_running() { pid_of "$1" "$2" >/dev/null; }

process_alive() {
    local pid=$1 state
    [[ -e /proc/$pid ]] || return 1
    read -r _ _ state _ <"/proc/$pid/stat" 2>/dev/null || return 1
    [[ $state != Z ]]
}

# Remove a pid file that does not belong to a live COMM process (left over
# from a crash or an earlier boot), so that daemons do not trip over it.
clear_stale_pidfile() {
    local pidfile=$1 comm=$2
    if [[ -e $pidfile ]] && ! is_running "$pidfile" "$comm"; then
        rm -f "$pidfile"
    fi
}

# stop_daemon NAME PIDFILE COMM: SIGTERM, wait, then SIGKILL.
stop_daemon() {
    local name=$1 pidfile=$2 comm=$3 pid i
    if ! pid=$(pid_of "$pidfile" "$comm"); then
        rm -f "$pidfile"
        return 0
    fi
    log "stopping $name (pid $pid)"
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < 300; i++)); do
        process_alive "$pid" || break
        sleep 0.1
    done
    if process_alive "$pid"; then
        log "$name did not stop within 30 s; killing it"
        kill -KILL "$pid" 2>/dev/null || true
        for ((i = 0; i < 50; i++)); do
            process_alive "$pid" || break
            sleep 0.1
        done
    fi
    rm -f "$pidfile"
}

# launch NAME COMMAND...: start a daemon in its own session, without a
# terminal and without the lock (fd 9); what it prints goes to
# $OUT_DIR/NAME.out (its real log is separate). Daemons that fork are waited
# for until their parent returns.
launch() {
    local name=$1
    shift
    mkdir -p "$OUT_DIR"
    setsid "$@" </dev/null >>"$OUT_DIR/$name.out" 2>&1 9>&-
}

launch_background() {
    local name=$1
    shift
    mkdir -p "$OUT_DIR"
    setsid "$@" </dev/null >>"$OUT_DIR/$name.out" 2>&1 9>&- &
}

# wait_until DESCRIPTION LOGFILE COMMAND...: poll COMMAND until it succeeds,
# fail with the tail of LOGFILE after READY_TIMEOUT seconds.
wait_until() {
    local desc=$1 logfile=$2
    shift 2
    local deadline=$((SECONDS + READY_TIMEOUT))
    until "$@" >/dev/null 2>&1; do
        if ((SECONDS >= deadline)); then
            die_with_logs "$desc not ready after ${READY_TIMEOUT}s" "$logfile"
        fi
        sleep 0.2
    done
}

write_env_file() {
    local service=$1
    write_file "$STATE_DIR/$service.env" 644 root:root || true
}

remove_env_file() { rm -f "$STATE_DIR/$1.env"; }

ensure_state_dir() { ensure_dir 755 root:root "$STATE_DIR" "$OUT_DIR"; }

# The name of this host must resolve (SLURM and Grid Engine look it up).
ensure_hostname_resolves() {
    if ! getent hosts "$SHORT_HOST" >/dev/null; then
        log "adding $SHORT_HOST to /etc/hosts"
        printf '127.0.0.1\t%s\n' "$SHORT_HOST" >>/etc/hosts
    fi
}

# The unprivileged test user: jobs are submitted as this user over ssh.
ensure_test_user() {
    local home
    if ! id -u "$TEST_USER" >/dev/null 2>&1; then
        log "creating user $TEST_USER"
        useradd --create-home --shell /bin/bash "$TEST_USER"
    fi
    # With "UsePAM no" sshd refuses accounts whose password is locked ("!").
    if [[ $(getent shadow "$TEST_USER" | cut -d: -f2) != '*' ]]; then
        usermod -p '*' "$TEST_USER"
    fi
    home=$(getent passwd "$TEST_USER" | cut -d: -f6)
    if [[ ! -d $home ]]; then
        mkdir -p "$home"
        cp -rT /etc/skel "$home"
        chown -R "$TEST_USER:" "$home"
    fi
    # Grid Engine clients need SGE_ROOT/SGE_CELL, also in non-interactive
    # ssh sessions (before the "not interactive: return" line of .bashrc).
    if ! grep -q '^export SGE_ROOT=' "$home/.bashrc" 2>/dev/null; then
        {
            printf 'export SGE_ROOT=%s SGE_CELL=%s\n' "$SGE_ROOT" "$SGE_CELL"
            cat "$home/.bashrc" 2>/dev/null || true
        } >"$home/.bashrc.new"
        mv -f "$home/.bashrc.new" "$home/.bashrc"
        chown "$TEST_USER:" "$home/.bashrc"
        chmod 644 "$home/.bashrc"
    fi
    if [[ ! -d $home/.ssh ]]; then
        mkdir -p "$home/.ssh"
        chown "$TEST_USER:" "$home/.ssh"
        chmod 700 "$home/.ssh"
    fi
    printf 'SGE_ROOT=%s\nSGE_CELL=%s\n' "$SGE_ROOT" "$SGE_CELL" |
        write_file "$home/.ssh/environment" 600 "$TEST_USER:$(id -gn "$TEST_USER")" || true
}

# --------------------------------------------------------------------------
# PostgreSQL
# --------------------------------------------------------------------------

pg_bindir() {
    local dir
    dir=$(find /usr/lib/postgresql -mindepth 2 -maxdepth 2 -name bin -type d 2>/dev/null | sort -V | tail -n 1)
    [[ -n $dir && -x $dir/postgres ]] || die "no PostgreSQL binaries under /usr/lib/postgresql"
    echo "$dir"
}

running_postgres() { is_running "$PG_DATA/postmaster.pid" postgres; }

ready_postgres() {
    running_postgres || return 1
    PGPASSWORD=$PG_PASSWORD PGCONNECT_TIMEOUT=5 "$(pg_bindir)/psql" -X -q -t -A \
        -h 127.0.0.1 -p "$PG_PORT" -U "$PG_USER" -d "$PG_DATABASE" \
        -c 'SELECT rolcreatedb FROM pg_roles WHERE rolname = current_user' 2>/dev/null | grep -qx t
}

pg_as_postgres() {
    runuser -u postgres -- "$(pg_bindir)/psql" -X -q -v ON_ERROR_STOP=1 \
        -h "$PG_SOCKET_DIR" -p "$PG_PORT" -d postgres
}

up_postgres() {
    local bindir version
    ensure_packages postgresql
    bindir=$(pg_bindir)
    version=$(basename "$(dirname "$bindir")")
    ensure_state_dir
    ensure_dir 700 postgres:postgres "$PG_DIR"
    ensure_dir 755 postgres:postgres "$PG_SOCKET_DIR"

    if [[ -f $PG_DATA/PG_VERSION && $(<"$PG_DATA/PG_VERSION") != "$version" ]]; then
        log "postgres data directory is for version $(<"$PG_DATA/PG_VERSION"), not $version: recreating it"
        running_postgres || rm -rf "$PG_DATA"
    fi
    if [[ ! -f $PG_DATA/PG_VERSION ]]; then
        log "initialising postgres $version cluster in $PG_DATA"
        rm -rf "$PG_DATA"
        runuser -u postgres -- "$bindir/initdb" -D "$PG_DATA" -U postgres -E UTF8 \
            --locale=C.UTF-8 --auth-local=peer --auth-host=scram-sha-256 >>"$OUT_DIR/initdb.out" 2>&1 ||
            die_with_logs "initdb failed" "$OUT_DIR/initdb.out"
    fi
    ensure_owner postgres:postgres "$PG_LOG"

    if ! running_postgres; then
        clear_stale_pidfile "$PG_DATA/postmaster.pid" postgres
        rm -f "$PG_SOCKET_DIR/.s.PGSQL.$PG_PORT" "$PG_SOCKET_DIR/.s.PGSQL.$PG_PORT.lock"
        log "starting postgres on 127.0.0.1:$PG_PORT"
        launch postgres runuser -u postgres -- "$bindir/pg_ctl" -D "$PG_DATA" -l "$PG_LOG" \
            -w -t "$READY_TIMEOUT" -s \
            -o "-p $PG_PORT -c listen_addresses=127.0.0.1 -c unix_socket_directories=$PG_SOCKET_DIR" \
            start || die_with_logs "postgres did not start" "$PG_LOG" "$OUT_DIR/postgres.out"
    fi
    wait_until "postgres" "$PG_LOG" "$bindir/pg_isready" -q -h 127.0.0.1 -p "$PG_PORT"

    if ! ready_postgres; then
        log "creating postgres role $PG_USER and database $PG_DATABASE"
        pg_as_postgres >/dev/null <<SQL || die "could not create the postgres role/database"
DO \$\$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '$PG_USER') THEN
        CREATE ROLE $PG_USER LOGIN CREATEDB PASSWORD '$PG_PASSWORD';
    ELSE
        ALTER ROLE $PG_USER LOGIN CREATEDB PASSWORD '$PG_PASSWORD';
    END IF;
END
\$\$;
SELECT 'CREATE DATABASE $PG_DATABASE OWNER $PG_USER'
WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = '$PG_DATABASE')\gexec
SQL
        ready_postgres || die_with_logs "cannot log in to postgres as $PG_USER" "$PG_LOG"
    fi

    printf 'JOBBRIDGE_TEST_POSTGRES_URL=postgresql+psycopg://%s:%s@127.0.0.1:%s/%s\n' \
        "$PG_USER" "$PG_PASSWORD" "$PG_PORT" "$PG_DATABASE" | write_env_file postgres
    log "postgres is up (127.0.0.1:$PG_PORT)"
}

down_postgres() {
    remove_env_file postgres
    if running_postgres; then
        log "stopping postgres"
        runuser -u postgres -- "$(pg_bindir)/pg_ctl" -D "$PG_DATA" -m fast -w -t 60 -s stop >&2 ||
            stop_daemon postgres "$PG_DATA/postmaster.pid" postgres
    fi
}

# --------------------------------------------------------------------------
# SLURM (munge, MariaDB, slurmdbd, slurmctld, slurmd)
# --------------------------------------------------------------------------

readonly SLURM_PACKAGES=(munge mariadb-server slurmdbd slurmctld slurmd slurm-client)

slurm_conf() {
    local mem_kb real_mem
    mem_kb=$(awk '/^MemTotal:/ {print $2}' /proc/meminfo)
    real_mem=$((mem_kb * 9 / 10 / 1024))
    cat <<EOF
# SLURM for the jobbridge integration tests (single node, no cgroups).
ClusterName=$SLURM_CLUSTER
SlurmctldHost=$SHORT_HOST(127.0.0.1)
SlurmUser=slurm
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
ReturnToService=2
SlurmctldPort=6817
SlurmdPort=6818
SlurmctldPidFile=$SLURM_RUN_DIR/slurmctld.pid
SlurmdPidFile=$SLURM_RUN_DIR/slurmd.pid
StateSaveLocation=/var/lib/slurm/slurmctld
SlurmdSpoolDir=/var/lib/slurm/slurmd
SlurmctldLogFile=$SLURM_LOG_DIR/slurmctld.log
SlurmdLogFile=$SLURM_LOG_DIR/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
MailProg=/bin/true

# scheduling: fast turnaround, several jobs per node
SchedulerType=sched/backfill
SchedulerParameters=batch_sched_delay=0,sched_interval=1,bf_interval=1,sched_min_interval=0
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=100
KillWait=2
OverTimeLimit=0
InactiveLimit=0
MaxArraySize=10001
MaxJobCount=100000

# accounting through slurmdbd
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStoragePort=6819
AccountingStorageEnforce=associations
JobAcctGatherType=jobacct_gather/linux
JobAcctGatherFrequency=30
JobCompType=jobcomp/none

NodeName=$SHORT_HOST NodeAddr=127.0.0.1 CPUs=$NCPUS RealMemory=$real_mem State=UNKNOWN
PartitionName=$SLURM_PARTITION Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
}

slurmdbd_conf() {
    cat <<EOF
# slurmdbd for the jobbridge integration tests
AuthType=auth/munge
DbdHost=localhost
DbdAddr=127.0.0.1
DbdPort=6819
SlurmUser=slurm
LogFile=$SLURM_LOG_DIR/slurmdbd.log
PidFile=$SLURM_RUN_DIR/slurmdbd.pid
DebugLevel=info
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageUser=$SLURM_DB_USER
StoragePass=$SLURM_DB_PASSWORD
StorageLoc=$SLURM_DB_NAME
EOF
}

running_munge() { is_running "$MUNGE_PIDFILE" munged; }
running_mariadb() { is_running "$MYSQL_PIDFILE" mariadbd; }
running_slurmdbd() { is_running "$SLURM_RUN_DIR/slurmdbd.pid" slurmdbd; }
running_slurmctld() { is_running "$SLURM_RUN_DIR/slurmctld.pid" slurmctld; }
running_slurmd() { is_running "$SLURM_RUN_DIR/slurmd.pid" slurmd; }

running_slurm() {
    running_munge && running_mariadb && running_slurmdbd && running_slurmctld && running_slurmd
}

munge_works() { munge -n </dev/null | unmunge >/dev/null; }
mariadb_works() { mariadb --protocol=socket -S "$MYSQL_SOCKET" -N -e 'SELECT 1'; }
slurmdbd_works() { sacctmgr -n -P show cluster format=cluster; }
slurmctld_works() { scontrol ping | grep -q 'is UP'; }

slurm_node_state() {
    local out
    out=$(sinfo -h -N -n "$SHORT_HOST" -o '%T' 2>/dev/null) || true
    echo "${out%%$'\n'*}"
}

slurm_node_ready() {
    case $(slurm_node_state) in
    idle | mixed | allocated | completing) return 0 ;;
    *) return 1 ;;
    esac
}

ready_slurm() {
    running_slurm && slurm_node_ready && sacct -n -X -a -S now-1minutes -o JobID >/dev/null 2>&1
}

start_munge() {
    local key=/etc/munge/munge.key
    if [[ ! -s $key ]]; then
        log "creating munge key"
        runuser -u munge -- mungekey -c -k "$key"
    fi
    ensure_dir 700 munge:munge /etc/munge /var/log/munge
    ensure_perm 400 munge:munge "$key"
    ensure_dir 711 munge:munge /var/lib/munge
    ensure_dir 755 munge:munge "$MUNGE_RUN_DIR"
    ensure_owner munge:munge "$MUNGE_LOG"
    if ! running_munge; then
        clear_stale_pidfile "$MUNGE_PIDFILE" munged
        log "starting munged"
        launch munged runuser -u munge -- /usr/sbin/munged --force ||
            die_with_logs "munged did not start" "$MUNGE_LOG" "$OUT_DIR/munged.out"
    fi
    wait_until "munged" "$MUNGE_LOG" munge_works
}

start_mariadb() {
    ensure_dir 755 mysql:mysql "$MYSQL_RUN_DIR" /var/log/mysql
    if [[ ! -d $MYSQL_DATA/mysql ]]; then
        log "initialising the MariaDB data directory"
        mkdir -p "$MYSQL_DATA"
        chown mysql:mysql "$MYSQL_DATA"
        mkdir -p "$OUT_DIR"
        mariadb-install-db --user=mysql --datadir="$MYSQL_DATA" --skip-test-db \
            --auth-root-authentication-method=socket >>"$OUT_DIR/mariadb-install-db.out" 2>&1 ||
            die_with_logs "mariadb-install-db failed" "$OUT_DIR/mariadb-install-db.out"
    fi
    ensure_owner mysql:mysql "$MYSQL_LOG"
    if ! running_mariadb; then
        clear_stale_pidfile "$MYSQL_PIDFILE" mariadbd
        log "starting mariadbd"
        launch_background mariadbd /usr/sbin/mariadbd --no-defaults --user=mysql \
            --datadir="$MYSQL_DATA" --socket="$MYSQL_SOCKET" --pid-file="$MYSQL_PIDFILE" \
            --skip-networking --log-error="$MYSQL_LOG" \
            --innodb-buffer-pool-size=256M --innodb-lock-wait-timeout=900
    fi
    wait_until "mariadbd" "$MYSQL_LOG" mariadb_works
}

start_slurmdbd() {
    if ! running_slurmdbd; then
        mariadb --protocol=socket -S "$MYSQL_SOCKET" <<SQL || die "could not create the slurm database user"
CREATE DATABASE IF NOT EXISTS $SLURM_DB_NAME;
CREATE USER IF NOT EXISTS '$SLURM_DB_USER'@'localhost' IDENTIFIED BY '$SLURM_DB_PASSWORD';
ALTER USER '$SLURM_DB_USER'@'localhost' IDENTIFIED BY '$SLURM_DB_PASSWORD';
GRANT ALL ON $SLURM_DB_NAME.* TO '$SLURM_DB_USER'@'localhost';
SQL
        clear_stale_pidfile "$SLURM_RUN_DIR/slurmdbd.pid" slurmdbd
        log "starting slurmdbd"
        launch slurmdbd /usr/sbin/slurmdbd ||
            die_with_logs "slurmdbd did not start" "$SLURM_LOG_DIR/slurmdbd.log" "$OUT_DIR/slurmdbd.out"
        wait_until "slurmdbd" "$SLURM_LOG_DIR/slurmdbd.log" slurmdbd_works
    fi
}

# Users associated with the test account (fails if slurmdbd does not answer).
slurm_assoc_users() {
    sacctmgr -n -P show assoc where cluster="$SLURM_CLUSTER" account="$SLURM_ACCOUNT" format=user
}

# Cluster, account and user associations (AccountingStorageEnforce needs
# them for every user that submits: root and the ssh test user).
ensure_slurm_associations() {
    local users
    if ! users=$(slurm_assoc_users 2>/dev/null); then
        wait_until "slurmdbd" "$SLURM_LOG_DIR/slurmdbd.log" slurmdbd_works
        users=$(slurm_assoc_users)
    fi
    if grep -qx root <<<"$users" && grep -qx "$TEST_USER" <<<"$users"; then
        return 0
    fi
    log "adding slurm cluster $SLURM_CLUSTER, account $SLURM_ACCOUNT, users root and $TEST_USER"
    if ! sacctmgr -n -P show cluster format=cluster | grep -qx "$SLURM_CLUSTER"; then
        sacctmgr -i add cluster "$SLURM_CLUSTER" >&2
    fi
    if ! sacctmgr -n -P show account "$SLURM_ACCOUNT" format=account | grep -qx "$SLURM_ACCOUNT"; then
        sacctmgr -i add account "$SLURM_ACCOUNT" cluster="$SLURM_CLUSTER" \
            description="jobbridge tests" organization=jobbridge >&2
    fi
    sacctmgr -i add user root,"$TEST_USER" account="$SLURM_ACCOUNT" cluster="$SLURM_CLUSTER" >&2 || true
    sacctmgr -i modify user where name=root,"$TEST_USER" set defaultaccount="$SLURM_ACCOUNT" >&2 || true
    users=$(slurm_assoc_users)
    if ! grep -qx root <<<"$users" || ! grep -qx "$TEST_USER" <<<"$users"; then
        die_with_logs "slurm associations missing after sacctmgr" "$SLURM_LOG_DIR/slurmdbd.log"
    fi
}

start_slurmctld() {
    if ! running_slurmctld; then
        clear_stale_pidfile "$SLURM_RUN_DIR/slurmctld.pid" slurmctld
        log "starting slurmctld"
        launch slurmctld /usr/sbin/slurmctld ||
            die_with_logs "slurmctld did not start" "$SLURM_LOG_DIR/slurmctld.log" "$OUT_DIR/slurmctld.out"
    fi
    wait_until "slurmctld" "$SLURM_LOG_DIR/slurmctld.log" slurmctld_works
}

start_slurmd() {
    local deadline state resumed=0
    if ! running_slurmd; then
        clear_stale_pidfile "$SLURM_RUN_DIR/slurmd.pid" slurmd
        log "starting slurmd"
        launch slurmd /usr/sbin/slurmd ||
            die_with_logs "slurmd did not start" "$SLURM_LOG_DIR/slurmd.log" "$OUT_DIR/slurmd.out"
    fi
    deadline=$((SECONDS + READY_TIMEOUT))
    until slurm_node_ready; do
        state=$(slurm_node_state)
        # A node left down/drained by an earlier crash comes back on request.
        if [[ $resumed == 0 && $state =~ ^(down|drained|draining)$ ]]; then
            log "slurm node $SHORT_HOST is $state; resuming it"
            scontrol update nodename="$SHORT_HOST" state=resume >&2 || true
            resumed=1
        fi
        if ((SECONDS >= deadline)); then
            sinfo -R >&2 || true
            die_with_logs "slurm node $SHORT_HOST is '${state:-unknown}', not idle, after ${READY_TIMEOUT}s" \
                "$SLURM_LOG_DIR/slurmd.log" "$SLURM_LOG_DIR/slurmctld.log"
        fi
        sleep 0.2
    done
}

up_slurm() {
    local conf_changed=0 dbd_conf_changed=0
    ensure_packages "${SLURM_PACKAGES[@]}"
    ensure_state_dir
    ensure_hostname_resolves
    ensure_test_user

    mkdir -p "$SLURM_CONF_DIR" /var/lib/slurm/slurmd
    ensure_dir 755 slurm:slurm "$SLURM_RUN_DIR" "$SLURM_LOG_DIR" /var/lib/slurm/slurmctld
    slurm_conf | write_file "$SLURM_CONF_DIR/slurm.conf" 644 root:root && conf_changed=1
    # slurmdbd refuses a config that is not owned by SlurmUser with mode 600
    slurmdbd_conf | write_file "$SLURM_CONF_DIR/slurmdbd.conf" 600 slurm:slurm && dbd_conf_changed=1

    if [[ $dbd_conf_changed == 1 ]] && running_slurmdbd; then
        stop_daemon slurmdbd "$SLURM_RUN_DIR/slurmdbd.pid" slurmdbd
    fi
    if [[ $conf_changed == 1 ]] && { running_slurmctld || running_slurmd; }; then
        log "slurm.conf changed; restarting slurmctld and slurmd"
        stop_daemon slurmd "$SLURM_RUN_DIR/slurmd.pid" slurmd
        stop_daemon slurmctld "$SLURM_RUN_DIR/slurmctld.pid" slurmctld
    fi

    start_munge
    start_mariadb
    start_slurmdbd
    ensure_slurm_associations
    start_slurmctld
    start_slurmd
    wait_until "sacct" "$SLURM_LOG_DIR/slurmdbd.log" sacct -n -X -a -S now-1minutes -o JobID

    {
        echo "JOBBRIDGE_TEST_SLURM=1"
        echo "JOBBRIDGE_TEST_SLURM_ACCOUNT=$SLURM_ACCOUNT"
        echo "JOBBRIDGE_TEST_SLURM_PARTITION=$SLURM_PARTITION"
    } | write_env_file slurm
    log "slurm is up (cluster $SLURM_CLUSTER, node $SHORT_HOST, partition $SLURM_PARTITION)"
}

down_slurm() {
    remove_env_file slurm
    stop_daemon slurmd "$SLURM_RUN_DIR/slurmd.pid" slurmd
    stop_daemon slurmctld "$SLURM_RUN_DIR/slurmctld.pid" slurmctld
    stop_daemon slurmdbd "$SLURM_RUN_DIR/slurmdbd.pid" slurmdbd
    stop_daemon mariadbd "$MYSQL_PIDFILE" mariadbd
    stop_daemon munged "$MUNGE_PIDFILE" munged
}

# --------------------------------------------------------------------------
# Grid Engine
# --------------------------------------------------------------------------

readonly SGE_PACKAGES=(gridengine-master gridengine-exec gridengine-client)

# The package scripts create the cell only if debconf says so.
preseed_sge() {
    local pkg
    for pkg in gridengine-common gridengine-client gridengine-master gridengine-exec; do
        printf '%s shared/gridengineconfig boolean true\n' "$pkg"
        printf '%s shared/gridenginecell string %s\n' "$pkg" "$SGE_CELL"
        printf '%s shared/gridenginemaster string %s\n' "$pkg" "$SHORT_HOST"
    done | debconf-set-selections
}

# The host name as Grid Engine resolves it.
sge_hostname() {
    /usr/lib/gridengine/gethostname -name 2>/dev/null || echo "$SHORT_HOST"
}

# The execd spool directory is named after the host as commlib resolves it,
# which can differ from the name above (here: "localhost"), so look at all.
sge_execd_pidfiles() { compgen -G "$SGE_SPOOL/execd/*/execd.pid" || true; }
sge_execd_logs() { compgen -G "$SGE_SPOOL/execd/*/messages" || true; }

running_sge_qmaster() { is_running "$SGE_QMASTER_PIDFILE" sge_qmaster; }

running_sge_execd() {
    local pidfile
    for pidfile in $(sge_execd_pidfiles); do
        is_running "$pidfile" sge_execd && return 0
    done
    return 1
}
running_sge() { running_sge_qmaster && running_sge_execd; }

# The states column of the queue instance, or "missing"; empty means usable.
sge_queue_state() {
    local host=$1 out
    out=$(qstat -f -q "$SGE_QUEUE@$host" 2>/dev/null) || true
    awk -v q="$SGE_QUEUE@$host" '$1 == q { found = 1; print $6 } END { if (!found) print "missing" }' <<<"$out"
}

sge_queue_ready() { [[ -z $(sge_queue_state "$1") ]]; }

ready_sge() { running_sge && sge_queue_ready "$(sge_hostname)"; }

# The cell files the package scripts would have made (in case they did not).
ensure_sge_cell() {
    local host=$1 common=$SGE_ROOT/$SGE_CELL/common alias name ip
    local aliases=()
    if [[ ! -e $SGE_SPOOL/spooldb/sge || ! -f $common/bootstrap ]]; then
        log "initialising the Grid Engine cell $SGE_CELL"
        mkdir -p "$common" "$SGE_SPOOL/qmaster/job_scripts" "$SGE_SPOOL/spooldb" "$SGE_SPOOL/execd"
        chown sgeadmin:sgeadmin "$SGE_ROOT/$SGE_CELL" "$common" "$SGE_SPOOL/qmaster" \
            "$SGE_SPOOL/qmaster/job_scripts" "$SGE_SPOOL/spooldb" "$SGE_SPOOL/execd"
        [[ -f $common/bootstrap ]] ||
            install -m 644 -o sgeadmin -g sgeadmin /usr/share/gridengine/default-bootstrap "$common/bootstrap"
        if [[ ! -e $SGE_SPOOL/spooldb/sge ]]; then
            runuser -u sgeadmin -- /usr/share/gridengine/scripts/init_cluster \
                "$SGE_ROOT" "$SGE_CELL" "$SGE_SPOOL/spooldb" sgeadmin >&2
        fi
    fi
    printf '%s\n' "$host" | write_file "$common/act_qmaster" 644 sgeadmin:sgeadmin || true

    # Connections from 127.0.0.1 reverse-resolve to another name (localhost)
    # than the one the host calls itself; commlib refuses them unless the
    # names are declared aliases of each other.
    for ip in 127.0.0.1 $(getent ahostsv4 "$host" | awk '{print $1}' | sort -u); do
        name=$(getent hosts "$ip" | awk '{print $2; exit}') || true
        [[ -n $name && $name != "$host" ]] || continue
        for alias in "${aliases[@]}"; do
            [[ $alias == "$name" ]] && continue 2
        done
        aliases+=("$name")
    done
    if ((${#aliases[@]} > 0)); then
        printf '%s %s\n' "$host" "${aliases[*]}" | write_file "$common/host_aliases" 644 sgeadmin:sgeadmin || true
    fi
}

# Global config, scheduler, hosts, host group, queue and parallel environment.
configure_sge() {
    local host=$1 dir
    dir=$(mktemp -d)
    # shellcheck disable=SC2064
    trap "rm -rf '$dir'" RETURN

    # Global configuration: root's jobs allowed, accounting written at once.
    grep -v -e '^#' -e '^conf_version' /usr/share/gridengine/default-configuration |
        sed -e 's/^min_uid .*/min_uid 0/' -e 's/^min_gid .*/min_gid 0/' \
            -e 's/^reporting_params .*/reporting_params accounting=true reporting=false flush_time=00:00:01 joblog=false sharelog=00:00:00 accounting_flush_time=00:00:00/' \
            >"$dir/global"
    (cd "$dir" && qconf -Mconf global) >&2

    # Scheduler: run every second and on every submit/finish.
    qconf -ssconf | sed -e 's/^schedule_interval .*/schedule_interval 0:0:1/' \
        -e 's/^flush_submit_sec .*/flush_submit_sec 1/' \
        -e 's/^flush_finish_sec .*/flush_finish_sec 1/' >"$dir/sched"
    qconf -Msconf "$dir/sched" >&2

    qconf -sh 2>/dev/null | grep -qx "$host" || qconf -ah "$host" >&2
    qconf -ss 2>/dev/null | grep -qx "$host" || qconf -as "$host" >&2

    printf 'hostname %s\nload_scaling NONE\ncomplex_values NONE\nuser_lists NONE\nxuser_lists NONE\nprojects NONE\nxprojects NONE\nusage_scaling NONE\nreport_variables NONE\n' \
        "$host" >"$dir/exechost"
    if qconf -se "$host" >/dev/null 2>&1; then
        qconf -Me "$dir/exechost" >&2
    else
        qconf -Ae "$dir/exechost" >&2
    fi

    printf 'group_name @allhosts\nhostlist %s\n' "$host" >"$dir/hostgroup"
    if qconf -shgrp @allhosts >/dev/null 2>&1; then
        qconf -Mhgrp "$dir/hostgroup" >&2
    else
        qconf -Ahgrp "$dir/hostgroup" >&2
    fi

    cat >"$dir/pe" <<EOF
pe_name            $SGE_PE
slots              99999
user_lists         NONE
xuser_lists        NONE
start_proc_args    NONE
stop_proc_args     NONE
allocation_rule    \$pe_slots
control_slaves     FALSE
job_is_first_task  TRUE
urgency_slots      min
accounting_summary FALSE
qsort_args         NONE
EOF
    if qconf -sp "$SGE_PE" >/dev/null 2>&1; then
        qconf -Mp "$dir/pe" >&2
    else
        qconf -Ap "$dir/pe" >&2
    fi

    # Queue from the built-in template: one slot per core, bash, #! honoured,
    # no load threshold (a busy 2-core machine must keep scheduling).
    qconf -sq | sed -e "s/^qname .*/qname $SGE_QUEUE/" \
        -e 's/^hostlist .*/hostlist @allhosts/' \
        -e 's/^load_thresholds .*/load_thresholds NONE/' \
        -e "s/^pe_list .*/pe_list $SGE_PE/" \
        -e "s/^slots .*/slots $NCPUS/" \
        -e 's|^shell .*|shell /bin/bash|' \
        -e 's/^shell_start_mode .*/shell_start_mode unix_behavior/' >"$dir/queue"
    if qconf -sq "$SGE_QUEUE" >/dev/null 2>&1; then
        qconf -Mq "$dir/queue" >&2
    else
        qconf -Aq "$dir/queue" >&2
    fi
}

sge_config_stamp() { printf 'host=%s slots=%s queue=%s pe=%s v1\n' "$1" "$NCPUS" "$SGE_QUEUE" "$SGE_PE"; }

up_sge() {
    local host stamp_file=$STATE_DIR/sge.configured deadline state pidfile
    if ! is_installed gridengine-master || ! is_installed gridengine-exec || ! is_installed gridengine-client; then
        preseed_sge
    fi
    ensure_packages "${SGE_PACKAGES[@]}"
    ensure_state_dir
    ensure_hostname_resolves
    ensure_test_user

    host=$(sge_hostname)
    ensure_sge_cell "$host"
    ensure_dir 755 sgeadmin:sgeadmin /run/gridengine

    if ! running_sge_qmaster; then
        clear_stale_pidfile "$SGE_QMASTER_PIDFILE" sge_qmaster
        log "starting sge_qmaster"
        launch sge_qmaster /usr/sbin/sge_qmaster ||
            die_with_logs "sge_qmaster did not start" "$SGE_QMASTER_LOG" "$OUT_DIR/sge_qmaster.out"
        wait_until "sge_qmaster" "$SGE_QMASTER_LOG" qconf -sh
    fi

    state=$(sge_queue_state "$host")
    if [[ $state == missing ]]; then
        # either the qmaster does not answer yet or the queue is not there
        wait_until "sge_qmaster" "$SGE_QMASTER_LOG" qconf -sh
    fi
    if [[ $state == missing || ! -f $stamp_file || $(<"$stamp_file") != "$(sge_config_stamp "$host")" ]]; then
        log "configuring Grid Engine (queue $SGE_QUEUE, pe $SGE_PE, $NCPUS slots)"
        configure_sge "$host"
        sge_config_stamp "$host" | write_file "$stamp_file" 644 root:root || true
        state=$(sge_queue_state "$host")
    fi

    if ! running_sge_execd; then
        for pidfile in $(sge_execd_pidfiles); do
            clear_stale_pidfile "$pidfile" sge_execd
        done
        log "starting sge_execd"
        ensure_dir 755 sgeadmin:sgeadmin "$SGE_SPOOL/execd"
        # shellcheck disable=SC2046
        launch sge_execd /usr/sbin/sge_execd ||
            die_with_logs "sge_execd did not start" $(sge_execd_logs) "$OUT_DIR/sge_execd.out" "$SGE_QMASTER_LOG"
    fi

    deadline=$((SECONDS + READY_TIMEOUT))
    until [[ -z $state ]]; do
        # error/disabled states left over from an earlier run
        case $state in
        *E*) qmod -cq "$SGE_QUEUE@$host" >&2 || true ;;
        *d*) qmod -e "$SGE_QUEUE@$host" >&2 || true ;;
        esac
        if ((SECONDS >= deadline)); then
            qstat -f >&2 || true
            # shellcheck disable=SC2046
            die_with_logs "queue $SGE_QUEUE@$host is '${state}', not ready, after ${READY_TIMEOUT}s" \
                $(sge_execd_logs) "$SGE_QMASTER_LOG"
        fi
        sleep 0.2
        state=$(sge_queue_state "$host")
    done

    {
        echo "JOBBRIDGE_TEST_SGE=1"
        echo "SGE_ROOT=$SGE_ROOT"
        echo "SGE_CELL=$SGE_CELL"
        echo "JOBBRIDGE_TEST_SGE_QUEUE=$SGE_QUEUE"
        echo "JOBBRIDGE_TEST_SGE_PE=$SGE_PE"
    } | write_env_file sge
    log "sge is up (queue $SGE_QUEUE@$host, pe $SGE_PE)"
}

down_sge() {
    remove_env_file sge
    local pidfile
    for pidfile in $(sge_execd_pidfiles); do
        stop_daemon sge_execd "$pidfile" sge_execd
    done
    stop_daemon sge_qmaster "$SGE_QMASTER_PIDFILE" sge_qmaster
}

# --------------------------------------------------------------------------
# ssh
# --------------------------------------------------------------------------

sshd_conf() {
    cat <<EOF
# Private sshd for the jobbridge integration tests.
Port $SSH_PORT
ListenAddress 127.0.0.1
HostKey $SSH_HOST_KEY
PidFile $SSH_PIDFILE
AuthorizedKeysFile $SSH_AUTH_DIR/%u
# the key files live under /var/tmp (world-writable), which StrictModes refuses
StrictModes no
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin no
AllowUsers $TEST_USER
UsePAM no
PermitUserEnvironment yes
LogLevel VERBOSE
MaxStartups 100
MaxSessions 100
PrintMotd no
PrintLastLog no
X11Forwarding no
Subsystem sftp /usr/lib/openssh/sftp-server
EOF
}

running_ssh() { is_running "$SSH_PIDFILE" sshd; }

ssh_as_test_user() {
    ssh -p "$SSH_PORT" -i "$SSH_CLIENT_KEY" -o UserKnownHostsFile="$SSH_KNOWN_HOSTS" \
        -o GlobalKnownHostsFile=/dev/null -o StrictHostKeyChecking=yes -o BatchMode=yes \
        -o ConnectTimeout=5 -o LogLevel=ERROR "$TEST_USER@127.0.0.1" "$@"
}

ready_ssh() { running_ssh && ssh_as_test_user true </dev/null; }

up_ssh() {
    local conf_changed=0 output remote
    ensure_packages openssh-server openssh-client
    ensure_state_dir
    ensure_test_user

    ensure_dir 755 root:root "$SSH_DIR" "$SSH_AUTH_DIR"
    if [[ ! -s $SSH_HOST_KEY ]]; then
        rm -f "$SSH_HOST_KEY" "$SSH_HOST_KEY.pub"
        ssh-keygen -q -t ed25519 -N '' -C "test-sshd" -f "$SSH_HOST_KEY"
    fi
    if [[ ! -s $SSH_CLIENT_KEY ]]; then
        rm -f "$SSH_CLIENT_KEY" "$SSH_CLIENT_KEY.pub"
        ssh-keygen -q -t ed25519 -N '' -C "$TEST_USER-test" -f "$SSH_CLIENT_KEY"
    fi
    ensure_perm 600 root:root "$SSH_HOST_KEY" "$SSH_CLIENT_KEY"
    write_file "$SSH_AUTH_DIR/$TEST_USER" 644 root:root <"$SSH_CLIENT_KEY.pub" || true
    printf '[127.0.0.1]:%s %s\n' "$SSH_PORT" "$(cut -d' ' -f1,2 "$SSH_HOST_KEY.pub")" |
        write_file "$SSH_KNOWN_HOSTS" 644 root:root || true
    sshd_conf | write_file "$SSH_CONFIG" 644 root:root && conf_changed=1

    # privilege separation directory (on tmpfs, gone after a reboot)
    ensure_dir 755 root:root /run/sshd
    /usr/sbin/sshd -t -f "$SSH_CONFIG" || die "invalid sshd config $SSH_CONFIG"

    if [[ $conf_changed == 1 ]] && running_ssh; then
        stop_daemon sshd "$SSH_PIDFILE" sshd
    fi
    if ! running_ssh; then
        clear_stale_pidfile "$SSH_PIDFILE" sshd
        log "starting sshd on 127.0.0.1:$SSH_PORT"
        launch sshd /usr/sbin/sshd -f "$SSH_CONFIG" -E "$SSH_LOG" ||
            die_with_logs "sshd did not start" "$SSH_LOG" "$OUT_DIR/sshd.out"
    fi

    # The test user must log in and reach the schedulers that are up
    # (a single connection when all is well).
    remote="true"
    if running_slurm; then
        remote+=" && squeue -h -u $TEST_USER >/dev/null"
    fi
    if running_sge; then
        remote+=" && qstat >/dev/null"
    fi
    if ! output=$(ssh_as_test_user "$remote" </dev/null 2>&1); then
        wait_until "sshd" "$SSH_LOG" ssh_as_test_user true
        output=$(ssh_as_test_user "$remote" </dev/null 2>&1) ||
            die "$TEST_USER over ssh cannot run the scheduler commands ($remote): $output"
    fi

    {
        echo "JOBBRIDGE_TEST_SSH_HOST=127.0.0.1"
        echo "JOBBRIDGE_TEST_SSH_PORT=$SSH_PORT"
        echo "JOBBRIDGE_TEST_SSH_USER=$TEST_USER"
        echo "JOBBRIDGE_TEST_SSH_KEY=$SSH_CLIENT_KEY"
        echo "JOBBRIDGE_TEST_SSH_KNOWN_HOSTS=$SSH_KNOWN_HOSTS"
        echo "JOBBRIDGE_TEST_SSH_LOG=$SSH_LOG"
    } | write_env_file ssh
    log "ssh is up ($TEST_USER@127.0.0.1:$SSH_PORT)"
}

down_ssh() {
    remove_env_file ssh
    stop_daemon sshd "$SSH_PIDFILE" sshd
}

# --------------------------------------------------------------------------
# commands
# --------------------------------------------------------------------------

usage() {
    cat >&2 <<EOF
usage: $0 up|down|status|env [postgres|slurm|sge|ssh|all]
       $0 stop-daemon|start-daemon slurmctld|slurmdbd
EOF
    exit 2
}

# Kubernetes: a control plane built from Debian's source package, with a stand-in node;
# scripts/k8s-cluster.sh does the work and writes its own k8s.env.
readonly K8S_SCRIPT=$(dirname -- "$(readlink -f -- "${BASH_SOURCE[0]}")")/k8s-cluster.sh

up_k8s() { bash "$K8S_SCRIPT" up; }
down_k8s() { bash "$K8S_SCRIPT" down; }

# Whether the daemons of a service are running (cheap: pid files only).
running_service() {
    case $1 in
    postgres) running_postgres ;;
    slurm) running_slurm ;;
    sge) is_installed gridengine-exec && running_sge ;;
    ssh) running_ssh ;;
    k8s) bash "$K8S_SCRIPT" status >/dev/null 2>&1 ;;
    esac
}

# Whether a service answers (used by status).
ready_service() {
    case $1 in
    postgres) ready_postgres ;;
    slurm) is_installed slurm-client && ready_slurm ;;
    sge) is_installed gridengine-exec && ready_sge ;;
    ssh) ready_ssh ;;
    k8s) bash "$K8S_SCRIPT" status >/dev/null 2>&1 ;;
    esac
}

take_lock() {
    ensure_state_dir
    exec 9>"$STATE_DIR/.lock"
    flock -w 1800 9 || die "another run of $0 holds $STATE_DIR/.lock"
}

cmd_up() {
    local service start
    take_lock
    for service in "$@"; do
        start=$SECONDS
        "up_$service"
        if ((SECONDS - start > 2)); then
            log "$service took $((SECONDS - start)) s"
        fi
    done
}

cmd_down() {
    local service i
    take_lock
    # reverse order: ssh first, postgres last
    for ((i = $# ; i > 0; i--)); do
        service=${!i}
        "down_$service"
        log "$service is down"
    done
}

cmd_status() {
    local service rc=0
    for service in "$@"; do
        if ready_service "$service"; then
            printf '%-9s up\n' "$service"
        elif running_service "$service"; then
            printf '%-9s running but not answering\n' "$service"
            rc=1
        else
            printf '%-9s down\n' "$service"
            rc=1
        fi
    done
    return "$rc"
}

cmd_env() {
    local service
    for service in "$@"; do
        if [[ -f $STATE_DIR/$service.env ]] && running_service "$service"; then
            cat "$STATE_DIR/$service.env"
        fi
    done
}

# One SLURM daemon of a running cluster, stopped and started again by the fault
# tests; start waits until the daemon answers and the node takes jobs.
cmd_stop_daemon() {
    case $1 in
    slurmctld) stop_daemon slurmctld "$SLURM_RUN_DIR/slurmctld.pid" slurmctld ;;
    slurmdbd) stop_daemon slurmdbd "$SLURM_RUN_DIR/slurmdbd.pid" slurmdbd ;;
    *) usage ;;
    esac
}

cmd_start_daemon() {
    case $1 in
    slurmctld)
        start_slurmctld
        start_slurmd
        ;;
    slurmdbd)
        start_slurmdbd
        wait_until "sacct" "$SLURM_LOG_DIR/slurmdbd.log" sacct -n -X -a -S now-1minutes -o JobID
        ;;
    *) usage ;;
    esac
}

main() {
    local command=${1:-} target=${2:-all} services
    [[ $# -le 2 ]] || usage
    case $command in
    stop-daemon | start-daemon)
        [[ $# == 2 ]] || usage
        [[ $(id -u) == 0 ]] || die "$command needs root"
        # a caller that keeps a daemon down for a while holds the lock itself meanwhile
        [[ ${JOBBRIDGE_TEST_CLUSTERS_LOCKED:-} == 1 ]] || take_lock
        "cmd_${command//-/_}" "$target"
        return
        ;;
    esac
    case $target in
    all) services=("${ALL_SERVICES[@]}") ;;
    postgres | slurm | sge | ssh | k8s) services=("$target") ;;
    *) usage ;;
    esac
    case $command in
    up | down)
        [[ $(id -u) == 0 ]] || die "$command needs root"
        "cmd_$command" "${services[@]}"
        ;;
    status) cmd_status "${services[@]}" || exit 1 ;;
    env) cmd_env "${services[@]}" ;;
    *) usage ;;
    esac
}

main "$@"
