"""The FPGA model against published accelerators: one test per design, and the table's text.

Each design's expected ratio band is written here from the validation table in
docs/hwmodel-fpga.md, so a change to the model that moves a design shows up as a failure
to look at, not as a silently different table.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from hwmodel.fpga import Engine, estimate
from hwmodel.fpga import validation as v
from hwmodel.fpga.networks import alexnet_two_group, vgg16

BY_KEY = {d.key: d for d in v.DESIGNS}
# The goal, written here rather than read from the module under test.
GOAL_CONV, GOAL_E2E = 0.20, 0.25


def test_at_least_four_designs_each_with_a_paper_and_sources():
    assert len(v.DESIGNS) >= 4
    for d in v.DESIGNS:
        assert d.paper and d.facts
        for measured in (d.conv, d.end_to_end):
            assert measured is None or measured.source.split(",")[0].split(":")[0] in ("VERIFIED", "SECONDARY")


def test_zhang2015_alexnet_convs_on_vc707():
    c = v.compare(BY_KEY["zhang2015"])
    # The paper's design point: 64 x 7 float MACs at 5 DSP48E1 each, 100 MHz.
    assert (c.conv.dsp_used, c.conv.freq_mhz, c.conv.bits) == (2240, 100.0, 32)
    assert c.end_to_end is None
    # The paper's formula over its layer table gives 2,005,892 cycles (tests/test_hwmodel_fpga.py): at
    # 100 MHz the compute alone would run at this ratio.  Loading each layer's first tile and storing
    # its last only add time, so the model must come out below it, and within the 20 % goal.
    macs = sum(x.macs for x in alexnet_two_group())
    compute_only = 2 * macs / (2_005_892 / 100e6) / 61.62e9
    assert compute_only == pytest.approx(1.0775, abs=1e-3)
    assert c.conv_ratio >= 1 - GOAL_CONV
    assert c.conv_ratio < compute_only
    assert c.within_goal and c.conv.fits


def test_qiu2016_vgg16_svd_on_zc706():
    d = BY_KEY["qiu2016"]
    c = v.compare(d)
    assert c.conv.freq_mhz == 150.0 and c.conv.bits == 16 and c.conv.dsp_used <= 780 == d.dsp_published
    assert d.device.dram_gbps == 4.264 and d.device.dram.port_gbps == 4.8  # the zc706-ps preset's four HP ports
    # No engine of the paper's 780 DSPs (one 16-bit MAC each at 150 MHz, 234 GOP/s) beats its roof:
    # the convs' ratio is below 234 / 187.8, and the docs claim it within the 20 % goal.
    roof = 2 * 780 * 150e6
    assert c.conv_ratio >= 1 - GOAL_CONV
    assert c.conv_ratio <= 1 + GOAL_CONV
    assert c.conv_ratio < roof / 187.8e9
    # End to end the docs claim it outside the 25 % goal: its FC layers stream 71 MB of weights at
    # ~3.4 GB/s, where the measured ~61 ms of FC time means ~1.16 GB/s.  It cannot be faster than the
    # convs at the roof plus the FC weights that do not fit the block RAM at the preset's best rate.
    fc_bytes = 2 * sum(x.params for x in vgg16(svd_rank=500) if x.kind == "linear")
    assert fc_bytes == pytest.approx(71e6, rel=0.01)
    conv_ops = 2 * sum(x.macs for x in vgg16(svd_rank=500, classifier=False))
    floor_s = conv_ops / roof + (fc_bytes - 545 * 4096) / (4.264e9 * 0.8)
    assert c.end_to_end_ratio > 1 + GOAL_E2E
    assert c.end_to_end_ratio < (1 / floor_s) / 4.45
    assert not c.within_goal
    measured_fc_s = 1 / 4.45 - 30.69 / 187.8  # end to end minus the convs, from the two published figures
    assert fc_bytes / measured_fc_s == pytest.approx(1.16e9, rel=0.02)


def test_qiu2016_with_one_hp_port_is_marked_calibrated():
    d = BY_KEY["qiu2016-1hp"]
    assert d.calibrated and d.device.dram.port_gbps == 1.2  # 64 bits x 150 MHz (UG585)
    c = v.compare(d)
    # Within both goals, and under the same roof and floor as qiu2016 with the FC weights at the one
    # port's 1.2 GB/s.
    roof = 2 * 780 * 150e6
    fc_bytes = 2 * sum(x.params for x in vgg16(svd_rank=500) if x.kind == "linear")
    conv_ops = 2 * sum(x.macs for x in vgg16(svd_rank=500, classifier=False))
    floor_s = conv_ops / roof + (fc_bytes - 545 * 4096) / 1.2e9
    assert c.conv_ratio >= 1 - GOAL_CONV
    assert c.conv_ratio <= 1 + GOAL_CONV
    assert c.conv_ratio < roof / 187.8e9
    assert c.end_to_end_ratio >= 1 - GOAL_E2E
    assert c.end_to_end_ratio <= 1 + GOAL_E2E
    assert c.end_to_end_ratio < (1 / floor_s) / 4.45
    assert v.table_rows([c])[0]["goal"] == "yes (calibrated)"


@pytest.mark.parametrize(("key", "low", "high"), [("pipecnn-vgg16", 1.15, 1.25), ("pipecnn-alexnet", 0.8, 0.9)])
def test_pipecnn_on_de5_net(key, low, high):
    d = BY_KEY[key]
    c = v.compare(d)
    # 16 input channels x 28 compute units = 448 8-bit MACs at 198 MHz.  PipeCNN packs two 8x8
    # multipliers per DSP block (it reports 247 DSPs); the model's Stratix V family counts three.
    assert c.end_to_end.engine == Engine(28, 16) and c.end_to_end.freq_mhz == 198.0
    assert c.end_to_end.dsp_used == 150 and d.dsp_published == 247
    assert low < c.end_to_end_ratio < high
    assert c.within_goal and c.end_to_end.fits


def test_pipecnn_alexnet_at_the_readmes_batch_of_16():
    d = BY_KEY["pipecnn-alexnet"]
    est = estimate([replace(x, batch=16) for x in alexnet_two_group(classifier=True)], device=d.device, bits=8,
                   engine=d.engine)
    per_image_ms = est.latency_s * 1e3 / 16
    assert f"{per_image_ms:.2f} ms per image (ratio {15.0 / per_image_ms:.2f})" in " ".join(d.facts)


def test_ma2017_vgg16_on_arria10():
    c = v.compare(BY_KEY["ma2017"])
    assert c.end_to_end.dsp_used <= 1518
    assert 0.8 < c.end_to_end_ratio < 0.95  # 55.8 vs 47.97 ms
    assert c.within_goal


def test_not_expressible_designs_say_what_is_missing_and_their_figures_hold():
    assert len(v.NOT_EXPRESSIBLE) >= 3
    assert all(len(why) > 40 for why in v.NOT_EXPRESSIBLE.values())
    # The DE5a-net figures quoted there: an engine explored per network within 683 DSPs at 218 MHz.
    de5a = replace(BY_KEY["pipecnn-vgg16"].device, name="de5a-net", dsp=683, bram_bytes=2713 * 2048, freq_mhz=218.0,
                   dsp_family="intel-vp")
    alex = estimate(alexnet_two_group(classifier=True), device=de5a, bits=8)
    vgg = estimate(vgg16(), device=de5a, bits=8)
    why = next(w for k, w in v.NOT_EXPRESSIBLE.items() if k.startswith("PipeCNN on DE5a-net"))
    assert f"{5.0 / (alex.latency_s * 1e3):.2f}x (AlexNet)" in why and f"{110.0 / (vgg.latency_s * 1e3):.2f}x" in why
    # Lu et al.'s figure is above any one-MAC-per-DSP engine on the ZCU102 at 200 MHz: the explored
    # 16-bit engine's roof on the preset is below it.
    roof = estimate(vgg16(), device="zcu102", bits=16).compute_roof_gops
    assert roof < 2940.7 and "1008 GOP/s" in next(w for k, w in v.NOT_EXPRESSIBLE.items() if k.startswith("Lu"))


def test_the_table_rows_and_the_goal():
    rows = v.table_rows(v.run())
    assert [r["design"] for r in rows] == [d.key for d in v.DESIGNS]
    assert {r["design"]: r["goal"] for r in rows} == {
        "zhang2015": "yes", "qiu2016": "NO", "qiu2016-1hp": "yes (calibrated)", "pipecnn-vgg16": "yes",
        "pipecnn-alexnet": "yes", "ma2017": "yes"}
    qiu = next(r for r in rows if r["design"] == "qiu2016")
    assert (qiu["conv measured"], qiu["e2e measured"]) == ("187.8 GOP/s", "4.45 fps")
    assert qiu["e2e model"].endswith(" fps") and qiu["DSP model/budget"].endswith("/780") and qiu["DSP paper"] == "780"


def test_measured_takes_exactly_one_unit():
    with pytest.raises(ValueError, match="^Measured takes exactly one of gops, ms and fps$"):
        v.Measured(gops=1.0, ms=2.0)
    with pytest.raises(ValueError, match="exactly one"):
        v.Measured()


def test_a_design_outside_the_goal_is_reported():
    # The same Zhang design measured at half its throughput: the model is 2x optimistic.
    slow = replace(BY_KEY["zhang2015"], conv=v.Measured(gops=30.81, source="VERIFIED"))
    c = v.compare(slow)
    assert c.conv_ratio > 2 and not c.within_goal
    assert v.table_rows([c])[0]["goal"] == "NO"


def test_the_docs_table_is_what_the_model_prints():
    # docs/hwmodel-fpga.md's validation table, row by row, against the rows fpga-validate prints.
    docs = (Path(__file__).parents[1] / "docs" / "hwmodel-fpga.md").read_text().splitlines()
    start = docs.index(next(line for line in docs if line.startswith("| design | device | bits | MHz | DSP paper")))
    header = [c.strip() for c in docs[start].strip("|").split("|")]
    written = [[c.strip() for c in line.strip("|").split("|")] for line in docs[start + 2:start + 2 + len(v.DESIGNS)]]
    rows = v.table_rows(v.run())
    assert header == list(rows[0]) and v.GOAL_CONV == GOAL_CONV and v.GOAL_END_TO_END == GOAL_E2E
    assert written == [[str(x) for x in r.values()] for r in rows]
