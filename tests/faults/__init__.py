"""A fault-injection harness for the exactly-once tests against the real test clusters.

- ``wrappers``: scheduler commands that delay, fail, hang after acting, kill their caller,
  lie or hide jobs, switched on and off by rule files while jobbridge runs;
- ``daemons``: SLURM daemons stopped and started again, a tmpfs that runs out of space;
- ``remote``: wrappers on the ssh test user's PATH, killing the master connection and ssh
  clients in flight;
- ``counting``: what the schedulers really hold, compared with the store;
- ``engines``: small settings, engines in threads and processes on one store, bounded waits.
"""

from tests.faults.counting import (
    NativeJob,
    Tally,
    run_real,
    sge_native_jobs,
    slurm_native_jobs,
    slurm_queue_state,
    tag,
    tally,
)
from tests.faults.daemons import (
    daemon_stopped,
    ensure_daemons_up,
    fill,
    small_tmpfs,
    start_daemon,
    stop_daemon,
)
from tests.faults.engines import (
    BATCH_OPTIONS,
    ENGINE_SETTINGS,
    REFRESHER,
    SUBMITTER,
    EngineProcess,
    Setup,
    cancel_leftovers,
    describe,
    history,
    keep_refreshing,
    marker,
    refresh_until,
    settle,
    spec_json,
    submit_in_threads,
    wait_until,
)
from tests.faults.remote import (
    Chaos,
    kill_master,
    kill_ssh_clients,
    master_pid,
    remote_fault_bin,
    ssh_clients,
)
from tests.faults.wrappers import FaultBin, Rule, is_wrapper, sge_record, slurm_record

__all__ = [
    "BATCH_OPTIONS",
    "ENGINE_SETTINGS",
    "REFRESHER",
    "SUBMITTER",
    "Chaos",
    "EngineProcess",
    "FaultBin",
    "NativeJob",
    "Rule",
    "Setup",
    "Tally",
    "cancel_leftovers",
    "daemon_stopped",
    "describe",
    "ensure_daemons_up",
    "fill",
    "history",
    "is_wrapper",
    "keep_refreshing",
    "kill_master",
    "kill_ssh_clients",
    "marker",
    "master_pid",
    "refresh_until",
    "remote_fault_bin",
    "run_real",
    "settle",
    "sge_native_jobs",
    "sge_record",
    "slurm_native_jobs",
    "slurm_queue_state",
    "slurm_record",
    "small_tmpfs",
    "spec_json",
    "ssh_clients",
    "start_daemon",
    "stop_daemon",
    "submit_in_threads",
    "tag",
    "tally",
    "wait_until",
]
