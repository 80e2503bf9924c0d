"""The figures loadtest.cluster_sessions and loadtest.cluster_waits read besides the brokers'
CPU: etcd's /metrics, the machine's idle share and this process's CPU, the time a process
waited for a CPU."""
from __future__ import annotations

import os
import resource

from loadtest.cluster_sessions import Machine, parse_etcd_metrics
from loadtest.cluster_waits import run_wait

# (the shape of etcd 3.5's /metrics, cut down)
ETCD_METRICS = """\
# HELP etcd_disk_wal_fsync_duration_seconds The latency distributions of fsync called by WAL.
# TYPE etcd_disk_wal_fsync_duration_seconds histogram
etcd_disk_wal_fsync_duration_seconds_bucket{le="0.001"} 80
etcd_disk_wal_fsync_duration_seconds_bucket{le="0.064"} 118
etcd_disk_wal_fsync_duration_seconds_bucket{le="0.128"} 119
etcd_disk_wal_fsync_duration_seconds_bucket{le="0.256"} 121
etcd_disk_wal_fsync_duration_seconds_bucket{le="+Inf"} 122
etcd_disk_wal_fsync_duration_seconds_sum 0.75
etcd_disk_wal_fsync_duration_seconds_count 122
grpc_server_handled_total{grpc_code="OK",grpc_method="Txn",grpc_service="etcdserverpb.KV",grpc_type="unary"} 100
grpc_server_handled_total{grpc_code="Unavailable",grpc_method="Txn",grpc_service="etcdserverpb.KV",grpc_type="unary"} 2
grpc_server_handled_total{grpc_code="OK",grpc_method="Range",grpc_service="etcdserverpb.KV",grpc_type="unary"} 7
etcd_server_proposals_committed_total 130
"""


def test_etcd_metrics_give_transactions_of_every_code_and_the_wal_fsyncs():
    f = parse_etcd_metrics(ETCD_METRICS)
    assert f == {"txns": 102.0, "fsyncs": 122.0, "fsync_s": 0.75, "fsyncs_128ms": 119.0}
    assert parse_etcd_metrics("") == {"txns": 0.0, "fsyncs": 0.0, "fsync_s": 0.0, "fsyncs_128ms": 0.0}


def own_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def test_machine_says_this_process_cpu_and_an_idle_share_between_none_and_all():
    m = Machine()
    m.mark()
    start = own_cpu()
    while own_cpu() - start < 0.05:  # (work, not a sleep: the CPU this process used is the figure)
        sum(range(1000))
    idle, used = m.sample()
    assert 0.0 <= idle <= 1.0
    assert used >= 0.05


def test_run_wait_reads_this_process_and_never_falls():
    first = run_wait(os.getpid())
    assert first >= 0.0
    start = own_cpu()
    while own_cpu() - start < 0.02:
        sum(range(1000))
    assert run_wait(os.getpid()) >= first
    assert run_wait(2 ** 22 + 12345) == 0.0  # (no such process: nothing read)
