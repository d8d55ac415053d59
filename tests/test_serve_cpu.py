"""The serve benchmark's CPU accounting: per-role CPU over a window, the machine's stolen time, the machine."""

import os

from argus_serve import cpu


def test_cpu_by_role_sums_each_roles_processes_per_request_and_reports_steal():
    before = {-1: (1000, 10), 1: ("ingress", 1.0), 2: ("retriever", 2.0), 3: ("retriever", 0.5)}
    after = {
        -1: (1400, 30),
        1: ("ingress", 1.5),
        2: ("retriever", 2.8),
        3: ("retriever", 0.7),
        4: ("ranker", 0.25),
    }  # 4 started
    rows = cpu.cpu_by_role(before, after, seconds=2.0, requests=100)
    assert rows["retriever"] == {"cores": 0.5, "ms_per_request": 10.0}
    assert rows["ingress"] == {"cores": 0.25, "ms_per_request": 5.0}
    assert rows["ranker"] == {"cores": 0.125, "ms_per_request": 2.5}
    assert rows["total"] == {"cores": 0.875, "ms_per_request": 17.5, "stolen_fraction": 0.05}
    assert list(rows)[:3] == ["retriever", "ingress", "ranker"]  # largest first


def test_snapshot_finds_this_process_and_the_machine_description():
    snap = cpu.snapshot()
    assert snap[os.getpid()][0] == "load generator + driver" and snap[os.getpid()][1] > 0
    assert snap[-1][0] >= snap[-1][1] >= 0
    m = cpu.machine()
    assert (
        m["cores"] >= 1
        and m["memory_gib"] > 0
        and set(m["flags"]) <= {"avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile"}
    )
    assert str(m["cores"]) in cpu.describe(m)
