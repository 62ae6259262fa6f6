"""npu-smi as recorded on real machines: parsed by header whatever the chip and driver, and every way
it can fail to answer (absent, hung, DCMI errors) said in words a user can act on."""

from __future__ import annotations

import time

import psutil
import pytest

from launcher import npu
from launcher.settings import NpuSettings
from tests.ascend import Node, recorded


def parse(name: str) -> npu.Snapshot:
    return npu.parse_info(recorded(name))


def test_eight_cards_with_running_processes() -> None:
    snap = parse("info-8x32g-busy.txt")
    assert (snap.smi_version, snap.driver_version) == ("23.0.rc3", "23.0.rc2.3")
    assert [c.npu for c in snap.chips] == list(range(8)) and [c.index for c in snap.chips] == list(range(8))
    first = snap.chips[0]
    assert (first.name, first.health, first.bus_id) == ("xxx", "OK", "0000:C1:00.0")
    assert first.hbm == (30710, 32768) and first.memory == (4565, 15137)
    assert first.usage == "HBM 30710/32768 MB"
    assert snap.chips[3].memory == (3845, 15039)
    assert [(h.npu, h.chip, h.pid, h.name, h.memory_mb) for h in snap.holders[:2]] == [
        (0, 0, 139667, "python", 30780),
        (1, 0, 139577, "python", 30782),
    ]
    assert len(snap.holders) == 8 and all(h.container_pid is None for h in snap.holders)


def test_idle_with_elisions_and_no_running_processes_rows() -> None:
    snap = parse("info-8x32g-idle.txt")
    # The recording elides NPUs 1-6 ("..."): the two chips shown are what the parser finds.
    assert [(c.npu, c.hbm) for c in snap.chips] == [(0, (0, 32768)), (7, (0, 32768))]
    assert snap.holders == []


def test_container_layout_with_ddr_and_hbm_columns() -> None:
    snap = parse("info-910prob-container.txt")
    assert [(c.npu, c.name, c.memory, c.hbm) for c in snap.chips] == [
        (0, "910ProB", (2387, 13553), (18, 32768)),
        (1, "910ProB", (1840, 15665), (8, 32768)),
    ]


def test_newer_driver_process_id_in_container_column() -> None:
    # An excerpt that begins mid-table: the device rows have no header and are not guessed at.
    snap = parse("info-910b-container-pid-excerpt.txt")
    assert snap.chips == []
    assert [(h.npu, h.chip, h.pid, h.name, h.memory_mb, h.container_pid) for h in snap.holders] == [
        (0, 0, 632268, "python3.1", 197, None)  # "NA": not in this container
    ]


def test_two_chips_per_npu_without_hbm_column_310p_duo() -> None:
    snap = parse("info-310p3-duo-two-chips.txt")
    assert [(c.index, c.npu, c.chip, c.extra["device"]) for c in snap.chips] == [(0, 2, 0, "0"), (1, 2, 1, "1")]
    assert all(c.hbm is None for c in snap.chips)
    assert snap.chips[1].memory == (1412, 43693) and snap.chips[1].usage == "memory 1412/43693 MB"


def test_two_chips_per_npu_with_phy_id_a3() -> None:
    snap = parse("info-a3-two-chips-phyid.txt")
    assert [(c.index, c.npu, c.chip) for c in snap.chips] == [(0, 0, 0), (1, 0, 1), (2, 1, 0), (3, 1, 1)]
    assert snap.chips[3].hbm == (45021, 65536)
    (holder,) = snap.holders
    assert (holder.npu, holder.chip, holder.name) == (1, 1, "VLLM::Worker_TP1")
    assert snap.holders_on([snap.chips[3]]) == [holder] and snap.holders_on(snap.chips[:3]) == []


def test_usage_health_and_common_views() -> None:
    usages = npu.parse_view(recorded("usages.txt"))
    assert usages["HBM Capacity(MB)"] == "32768" and usages["DDR Usage Rate(%)"] == "6"
    health = npu.parse_view(recorded("health-ok.txt"))
    assert health == {"Health Status": "OK", "Error Code": "NA", "Error Information": "NA"}
    common = npu.parse_view(recorded("common.txt"))
    assert common["Aicore Count"] == "30" and common["NPU Real-time Power(W)"] == "71.7"


@pytest.mark.parametrize(
    ("fixture", "fragments"),
    [
        ("failure-dcmi-8020.txt", ["ret is -8020", "driver's libraries or device files", "/usr/local/Ascend/driver"]),
        ("failure-dcmi-8005.txt", ["ret is -8005", "another container holds", "device plugin"]),
    ],
)
def test_recorded_failures_are_explained(node: Node, fixture: str, fragments: list[str]) -> None:
    node.fail(fixture, rc=255)
    with pytest.raises(npu.SmiUnavailable) as caught:
        npu.query(NpuSettings(), node.env())
    exc = caught.value
    assert exc.kind == "failed"
    text = " ".join([exc.what, exc.means, exc.fix])
    assert "DrvMngGetConsoleLogLevel" not in exc.what
    for fragment in fragments:
        assert fragment in text


def test_query_runs_the_program_on_path(node: Node) -> None:
    node.npu_smi("info-910prob-container.txt")
    snap = npu.query(NpuSettings(), node.env())
    assert len(snap.chips) == 2 and node.calls() == ["info"]


def test_absent(node: Node) -> None:
    with pytest.raises(npu.SmiUnavailable) as caught:
        npu.query(NpuSettings(), node.env(smi=False))
    assert caught.value.kind == "absent" and "npu-smi is not on PATH" in caught.value.what
    assert "/usr/local/sbin/npu-smi" in caught.value.fix


def test_hung_npu_smi_is_killed_at_the_timeout(node: Node) -> None:
    node.npu_smi("info-910prob-container.txt").hang(299.5)
    started = time.monotonic()
    with pytest.raises(npu.SmiUnavailable) as caught:
        npu.query(NpuSettings(smi_timeout=0.3), node.env())
    assert caught.value.kind == "timeout" and "within 0.3s" in caught.value.what
    assert time.monotonic() - started < 30  # the fake would sleep 299.5 s
    # The whole process group went: no `sleep 300` of the fake survives.
    assert not [p for p in psutil.process_iter(["cmdline"]) if p.info["cmdline"] == ["sleep", "299.5"]]


def test_a_view_that_fails_is_empty(node: Node) -> None:
    node.npu_smi("info-910prob-container.txt").view("health-0-0", "health-ok.txt")
    chips = npu.query(NpuSettings(), node.env()).chips
    assert npu.view(NpuSettings(), node.env(), "health", chips[0])["Health Status"] == "OK"
    assert npu.view(NpuSettings(), node.env(), "health", chips[1]) == {}  # the fake has none for NPU 1
