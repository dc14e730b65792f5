"""The FPGA model: devices, the Zhang-style engine, the three schedules, the anchors, bad input."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest

from fuseops import block_grid
from hwmodel.fpga import DEVICES, Device, Engine, estimate
from hwmodel.fpga import engine as eng
from hwmodel.fpga import schedule as sch
from hwmodel.fpga.graph import NETWORK_INPUT, build_graph, nest
from hwmodel.fpga.networks import alexnet_two_group, resnet18, vgg16
from hwmodel.layers import Layer

# ---------------------------------------------------------------------------- devices


@pytest.mark.parametrize(
    "name, dsp, bram36, uram, family",
    [  # datasheet counts: DS190, DS180, DS891, DS962
        ("zc706", 900, 545, 0, "DSP48E1"), ("vc707", 2800, 1030, 0, "DSP48E1"), ("zcu102", 2520, 912, 0, "DSP48E2"),
        ("ultra96v2", 360, 216, 0, "DSP48E2"), ("u250", 12288, 2688, 1280, "DSP48E2"),
    ],
)
def test_device_presets_match_datasheets(name, dsp, bram36, uram, family):
    device = DEVICES[name]
    assert device.dsp == dsp and device.dsp_family == family
    assert device.bram_bytes == bram36 * 4096 + uram * 32768
    assert device.dram_gbps > 0 and device.freq_mhz > 0
    assert "DS" in device.source  # cites its data sheet
    # Every preset sustains less than its peak, and says why.
    assert device.dram.efficiency < 1 and device.dram.half_burst_bytes > 0 and device.dram.source


def test_zc706_processor_side_dram():
    # UG585: the PS DDR3 is 32 bits at 1066 MT/s = 4,264 MB/s, reached through four 64-bit AXI_HP
    # ports at 150 MHz (1.2 GB/s each per direction: 4.8 GB/s, more than the DDR gives).
    ps = DEVICES["zc706-ps"]
    assert ps.dram_gbps == 4.264 and ps.dram.port_gbps == 4.8 and "UG585" in ps.source
    assert (ps.dsp, ps.bram_bytes, ps.dsp_family) == (900, 545 * 4096, "DSP48E1")
    # Long bursts: 4.264 GB/s x 0.8 x 8192 / (8192 + 128) = 3.358 GB/s, under the 4.8 GB/s port cap.
    assert ps.dram_rate(8192) == pytest.approx(4.264e9 * 0.8 * 8192 / 8320, rel=1e-12)


def test_device_validates_fields():
    with pytest.raises(ValueError, match="dsp"):
        Device("x", dsp=0, bram_bytes=1, dram_gbps=1.0, freq_mhz=100)
    with pytest.raises(ValueError, match="dram_gbps"):
        Device("x", dsp=1, bram_bytes=1, dram_gbps=-1.0, freq_mhz=100)


# ---------------------------------------------------------------------------- engine

def _conv(cin, cout, size, k, s=1, p=0, groups=1, **kw):
    return Layer("c", "conv", 1, cin, size, size, cout, k, k, s, s, p, p, 1, 1, groups, **kw)


def test_dsp_per_mac_follows_bits_and_family():
    assert Engine(64, 7).dsp(32, "DSP48E1") == 2240  # Zhang et al.'s VC707 design
    assert Engine(30, 30).dsp(16) == 900
    assert Engine(30, 30).dsp(8) == 450  # DSP48E2 (the default): two 8-bit MACs per slice (WP486)
    assert Engine(30, 30).dsp(8, "DSP48E1") == 900  # DSP48E1: no 8-bit packing
    assert Engine(3, 3).dsp(8) == 5  # 4.5 rounds up: a half-used DSP is still a DSP
    assert Engine(64, 7).dsp(32, "intel-vp") == 448  # Arria 10: one hardened float MAC per block
    # 8-bit on ZC706 (DSP48E1) gets no more MACs than 16-bit: the explored engines are the same.
    layers = vgg16(classifier=False)
    assert estimate(layers, device="zc706", bits=8).engine == estimate(layers, device="zc706", bits=16).engine


def test_compute_cycles_by_hand():
    layer = _conv(20, 40, 10, 3, p=1)
    # ceil(40/16) * ceil(20/8) * 10 * 10 * 9 = 3 * 3 * 900
    assert eng.compute_cycles(layer, Engine(16, 8)) == 3 * 3 * 900


def test_grouped_and_depthwise_lose_utilisation():
    dense = _conv(32, 32, 8, 3, p=1)
    grouped = _conv(32, 32, 8, 3, p=1, groups=4)
    depthwise = Layer("dw", "depthwise", 1, 32, 8, 8, 32, 3, 3, 1, 1, 1, 1, 1, 1, 32)
    engine = Engine(8, 8)
    assert eng.utilisation(dense, engine) == 1.0
    # 4 groups of 8 -> 8: each group fills the array, so same utilisation, a quarter of the cycles.
    assert eng.compute_cycles(grouped, engine) == 4 * 1 * 1 * 64 * 9
    # Depthwise: one multiplier of the 64 is busy.
    assert eng.compute_cycles(depthwise, engine) == 32 * 64 * 9
    assert eng.utilisation(depthwise, engine) == pytest.approx(1 / 64)


def test_tile_traffic_by_hand():
    layer = _conv(4, 8, 4, 3, p=1)  # M=8, N=4, R=C=4, K=3, S=1
    t = eng.tile_traffic(layer, Engine(4, 2), tr=2, tc=2)
    b_in, b_w, b_out = 2 * (2 + 2) * (2 + 2), 4 * 2 * 9, 4 * 2 * 2
    loads = 2 * 2 * 4  # m tiles x n tiles x spatial tiles
    assert (t.input_words, t.weight_words, t.output_words) == (loads * b_in, loads * b_w, 2 * 4 * b_out)
    assert t.buffer_words == 2 * (b_in + b_w + b_out)


def test_best_tiles_respects_the_bram_budget():
    layer = _conv(64, 64, 56, 3, p=1)
    roomy = eng.best_tiles(layer, Engine(16, 16), 10**7)
    tight = eng.best_tiles(layer, Engine(16, 16), 8000)
    assert roomy is not None and tight is not None
    assert tight.buffer_words <= 8000 < roomy.buffer_words
    assert tight.words > roomy.words  # smaller tiles re-read more halo and weights
    assert eng.best_tiles(layer, Engine(16, 16), 10) is None


def test_engine_exploration_uses_the_dsp_budget():
    layers = [_conv(64, 64, 14, 3, p=1), _conv(64, 128, 14, 3, p=1)]
    engine = eng.explore_engine(layers, dsp_budget=256, bits=16)
    assert engine.dsp(16) <= 256
    # 256 MACs per cycle divide both layers exactly: no idle multiplier.
    total = sum(eng.compute_cycles(x, engine) for x in layers)
    assert total == sum(x.macs for x in layers) // 256
    assert estimate(layers, device="ultra96v2", bits=32).dsp_used <= 360


# ---------------------------------------------------------------------------- dataflow and nesting

def test_graph_infers_pooling_branches_and_flatten():
    g = build_graph(vgg16())
    assert g.inputs[0].source == NETWORK_INPUT
    assert (g.inputs[2].source, g.inputs[2].pool_h) == (1, 2)  # conv2_1 after 2x2 pooling
    fc6 = g.inputs[13]
    assert fc6.source == 12 and fc6.flatten and fc6.pool_h == 2
    r = resnet18()
    g = build_graph(r)
    down = [i for i, layer in enumerate(r) if layer.name == "layer2.0.downsample"][0]
    assert r[g.inputs[down].source].name == "layer1.1.conv2"  # the block input, not conv2
    assert (down - 1, down) in g.merges  # conv2's output is added to the shortcut


def test_nesting_of_block_grids():
    fine = block_grid(56, 56, 28)[0]  # two blocks
    coarse = block_grid(28, 28, 28)[0]  # one block after 2x2 pooling
    assert nest(fine, 56, coarse, 2, False) == "coarser"
    assert nest(coarse, 28, block_grid(28, 28, 14)[0], 1, False) == "finer"  # one block feeds two
    assert nest(fine, 56, fine, 1, False) == "same"
    assert nest(fine, 56, block_grid(56, 56, 20)[0], 1, False) is None  # 20-pixel blocks straddle 28


def test_block_group_refuses_straddling_grids():
    a = _conv(8, 8, 56, 3, p=1, block_rows=block_grid(56, 56, 28)[0], block_cols=block_grid(56, 56, 28)[1])
    b = _conv(8, 8, 56, 3, p=1, block_rows=block_grid(56, 56, 20)[0], block_cols=block_grid(56, 56, 20)[1])
    ctx = sch.Context(build_graph([a, b]), Engine(8, 8), 16, DEVICES["zc706"].bram_bytes)
    assert sch.plan_block(ctx, 0, 1) is not None
    assert sch.plan_block(ctx, 0, 2) is None
    est = estimate([a, b], schedule="block-fused", engine=Engine(8, 8))
    assert est.dram_bytes["intermediate"] > 0  # the straddle forces the map through DRAM


def test_tiled_fused_pull_back_and_recompute():
    layer = _conv(4, 4, 8, 3, p=1)
    assert sch._pull_back(layer, [(0, 4), (4, 8)], "h") == [(0, 5), (3, 8)]
    # Two fused 3x3 convs cut into 4x4 output tiles recompute the overlap of the first.
    layers = [_conv(4, 4, 8, 3, p=1), _conv(4, 4, 8, 3, p=1)]
    # Whole-map tiles need 2 * (4*64 + 4*64) words of maps (double-buffered ends) = 2048 bytes.
    ctx = sch.Context(build_graph(layers), Engine(4, 4), 16, 1888)
    plan = sch.plan_tiled(ctx, 0, 2)
    assert plan is not None and plan.units > 1
    tiles = sch._tile_intervals(8, 8 // int(plan.units**0.5))
    rows_first = sum(b - a for a, b in sch._pull_back(layers[1], tiles, "h"))
    assert plan.extra_macs == 4 * (rows_first**2 - 64) * 4 * 9


# ---------------------------------------------------------------------------- schedules

@pytest.mark.parametrize("net", [lambda: vgg16(28, classifier=False), lambda: resnet18(28)])
def test_block_fused_never_moves_more_than_layer_by_layer(net):
    layers = net()
    by = {s: estimate(layers, schedule=s, device="zc706") for s in ("layer", "block-fused", "tiled-fused")}
    assert by["block-fused"].total_dram_bytes <= by["layer"].total_dram_bytes
    assert by["block-fused"].dram_bytes["intermediate"] < by["tiled-fused"].dram_bytes["intermediate"]
    assert by["tiled-fused"].extra_macs > 0 and by["block-fused"].extra_macs == 0
    for est in by.values():
        assert est.fits and est.buffer_bytes <= DEVICES["zc706"].bram_bytes
        assert est.fps == pytest.approx(1 / est.latency_s)
        assert est.gops == pytest.approx(2 * sum(x.macs for x in layers) / est.latency_s / 1e9)
        assert est.attainable_gops <= est.compute_roof_gops
        assert set(est.dram_bytes) == {"input", "weights", "output", "intermediate"}
        assert sum(g["n"] for g in est.groups) == len(layers) == len(est.layers)
        text = str(est)
        assert "group" in text and "intermediate" in text and layers[-1].name in text


def test_layer_schedule_sends_every_map_through_dram():
    layers = vgg16(classifier=False)
    est = estimate(layers, schedule="layer")
    maps = sum(x.out_channels * x.out_h * x.out_w for x in layers[:-1]) * 2  # bytes at 16 bits
    assert est.dram_bytes["intermediate"] >= 2 * maps  # written once, read at least once


# ---------------------------------------------------------------------------- anchors

def test_anchor_zhang_2015_alexnet_on_vc707():
    """Zhang et al., FPGA 2015: AlexNet convs, VC707, 100 MHz, float32, (Tm, Tn) = (64, 7).

    The paper: 2240 DSP, 61.62 GFLOPS, 21.61 ms per image.  Its layer table (per group
    of the two-GPU net): M, N, R, K = (48, 3, 55, 11), (128, 48, 27, 5), (192, 256, 13, 3),
    (192, 192, 13, 3), (128, 192, 13, 3), every layer twice.  The compute alone is
    2,005,892 cycles = 20.06 ms; each layer's first tile loads and last tile stores add a
    little (every layer is compute-bound at the VC707's sustained DDR3 bandwidth).  The
    model stays a few percent optimistic: it has no control overhead between tiles.
    """
    est = estimate(alexnet_two_group(), device="vc707", bits=32, engine=Engine(64, 7), freq_mhz=100)
    assert est.dsp_used == 2240
    per_group = [(48, 3, 55, 11), (128, 48, 27, 5), (192, 256, 13, 3), (192, 192, 13, 3), (128, 192, 13, 3)]
    cycles = sum(2 * math.ceil(m / 64) * math.ceil(n / 7) * r * r * k * k for m, n, r, k in per_group)
    assert cycles == 2_005_892
    assert sum(row["cycles"] for row in est.layers) == cycles
    assert cycles / 100e6 < est.latency_s < 1.02 * cycles / 100e6
    flops = 2 * sum(m * n * r * r * k * k * 2 for m, n, r, k in per_group)
    assert flops == pytest.approx(1.33e9, rel=0.002)  # the paper's 1.33 GFLOP
    assert est.latency_s == pytest.approx(21.61e-3, rel=0.08)
    assert est.gops == pytest.approx(61.62, rel=0.08)
    assert est.gops > 61.62  # an analytical model is optimistic: the gap is the overhead above
    assert all(g["bound"] == "compute" for g in est.groups)


def test_anchor_block_vgg16_f28_on_zc706():
    """Block VGG-16 (F28, 16-bit) on ZC706 at 150 MHz: blocking saves traffic, not time.

    Block-fused with all intermediate maps on chip: zero intermediate traffic, buffers
    within the 545 BRAM36.  Every conv of VGG-16 is compute-bound on this board, so the
    saved traffic buys no time; and the fully connected layers need conv5's whole output,
    so their 247 MB of 16-bit weights stream after the convs, hidden behind nothing but
    the little block RAM the convs leave free.
    """
    layers = vgg16(28)
    kept = estimate(layers, device="zc706", bits=16, schedule="block-fused", freq_mhz=150, objective="intermediate")
    assert kept.dram_bytes["intermediate"] == 0
    assert len(kept.groups) == 1
    assert kept.fits and kept.buffer_bytes <= 545 * 4096
    by_layer = estimate(layers, device="zc706", bits=16, schedule="layer", freq_mhz=150)
    maps = sum(x.out_channels * x.out_h * x.out_w for x in layers[:-1]) * 2
    assert by_layer.dram_bytes["intermediate"] > maps  # what block-fused saves: every map, twice
    assert kept.total_dram_bytes < by_layer.total_dram_bytes - maps
    # With the default objective the grouping may trade a little intermediate traffic for weights.
    auto = estimate(layers, device="zc706", bits=16, schedule="block-fused", freq_mhz=150)
    assert auto.total_dram_bytes <= kept.total_dram_bytes
    assert auto.dram_bytes["intermediate"] < 0.02 * by_layer.dram_bytes["intermediate"]
    # The time a block-fused schedule cannot beat: every conv cycle, then the FC weights that did
    # not fit in the block RAM, at the DRAM's peak.
    conv_s = sum(row["cycles"] for row in kept.layers if row["kind"] == "conv") / 150e6
    fc_bytes = 2 * sum(x.params for x in layers if x.kind == "linear")
    assert fc_bytes > 247e6
    floor_s = conv_s + (fc_bytes - 545 * 4096) / 12.8e9
    for est in (kept, auto):
        assert est.latency_s > floor_s
        assert est.fps < 1.03 * by_layer.fps  # no speedup beyond the fill and drain it saves
    # VGG-16's convs are 30.7 GOP: 12.19 fps (the DATE 2018 figure) is 374 GOPS, above the 270
    # GOPS roof of 900 DSP x 1 MAC x 150 MHz; on ZC706's DSP48E1, 8 bits do not pack either.
    gop = 2 * sum(x.macs for x in layers[:13]) / 1e9
    assert gop == pytest.approx(30.7, rel=0.01)
    assert kept.compute_roof_gops == pytest.approx(2 * 896 * 150e6 / 1e9)
    assert 12.19 * gop > max(kept.compute_roof_gops, 2 * 900 * 150e6 / 1e9)
    assert 6 < kept.fps < 12.19
    packed = estimate(layers, device="zc706", bits=8, schedule="block-fused", freq_mhz=150)
    assert packed.compute_roof_gops == kept.compute_roof_gops and packed.fps < 12.19


def test_fully_connected_weights_serve_the_whole_batch():
    # VGG-16's classifier at batch 8: each FC weight crosses DRAM once for all 8 images, not 8 times.
    fcs = [replace(x, batch=8) for x in vgg16()[-3:]]
    est = estimate(fcs, device="zc706", bits=16, engine=Engine(64, 14))
    params = sum(x.params for x in fcs)
    one = estimate([replace(x, batch=1) for x in fcs], device="zc706", bits=16, engine=Engine(64, 14))
    assert est.dram_bytes["weights"] == one.dram_bytes["weights"]
    # Whole Tm x Tn tiles move (4096 / 14 and 1000 / 64 leave partial tiles): 0.104 % over the weights.
    assert 2 * params <= est.dram_bytes["weights"] < 1.0011 * 2 * params
    # Weight-bound: 8 images take barely longer than 1, so the fps grows about 8-fold.
    assert est.latency_s < 1.1 * one.latency_s and est.fps > 7 * one.fps


# ---------------------------------------------------------------------------- bad input

def test_bad_input():
    layers = vgg16(classifier=False)[:3]
    with pytest.raises(ValueError, match="device"):
        estimate(layers, device="zc999")
    with pytest.raises(TypeError, match="device"):
        estimate(layers, device=706)
    with pytest.raises(ValueError, match="bits"):
        estimate(layers, bits=12)
    with pytest.raises(TypeError, match="bits"):
        estimate(layers, bits=True)
    with pytest.raises(ValueError, match="2240 DSP.*900"):
        estimate(layers, device="zc706", bits=32, engine=Engine(64, 7))
    with pytest.raises(ValueError, match="block convolutions"):
        estimate(layers, schedule="block-fused")
    with pytest.raises(ValueError, match="schedule"):
        estimate(layers, schedule="fused")
    with pytest.raises(ValueError, match="objective"):
        estimate(layers, objective="speed")
    with pytest.raises(ValueError, match="freq_mhz"):
        estimate(layers, freq_mhz=0)
    with pytest.raises(TypeError, match="model_or_layers"):
        estimate("vgg16")
    with pytest.raises(ValueError, match="empty"):
        estimate([])
    with pytest.raises(ValueError, match="Engine.tm"):
        Engine(0, 4)
    torch_nn = pytest.importorskip("torch.nn")
    with pytest.raises(ValueError, match="input_shape"):
        estimate(torch_nn.Conv2d(3, 8, 3))


def test_module_path_uses_trace():
    import torch.nn as nn

    from fuseops.nn import BlockConv2d

    model = nn.Sequential(BlockConv2d(3, 8, 3, padding=1, block_size=8), nn.ReLU(), BlockConv2d(8, 8, 3, padding=1,
                                                                                              block_size=8))
    est = estimate(model, input_shape=(1, 3, 16, 16), schedule="block-fused")
    assert est.dram_bytes["intermediate"] == 0 and len(est.layers) == 2


def test_graph_reads_fuse_halves_and_their_concatenation():
    c = 32
    stem = _conv(3, c, 16, 3, p=1)
    row = Layer("f.row", "fuse_row", 1, c // 2, 16, 16, c // 2, 1, 3, 1, 1, 0, 1, 1, 1, c // 2)
    col = Layer("f.col", "fuse_col", 1, c // 2, 16, 16, c // 2, 3, 1, 1, 1, 1, 0, 1, 1, c // 2)
    point = _conv(c, 64, 16, 1)
    g = build_graph([stem, row, col, point])
    assert [e.source for e in g.inputs] == [NETWORK_INPUT, 0, 0, 2]  # both halves read the stem
    assert (1, 2) in g.merges  # the row half waits on chip for the column half
    est = estimate([stem, row, col, point], schedule="tiled-fused", engine=Engine(8, 8))
    assert est.dram_bytes["output"] == 64 * 16 * 16 * 2  # only the last map leaves as output
    # Depthwise halves keep one multiplier of 64 busy.
    assert est.layers[1]["util"] == pytest.approx(1 / 64)


def test_batch_scales_work_and_fps():
    one = [_conv(16, 16, 28, 3, p=1)]
    four = [Layer("c", "conv", 4, 16, 28, 28, 16, 3, 3, 1, 1, 1, 1)]
    e1, e4 = estimate(one, engine=Engine(16, 16)), estimate(four, engine=Engine(16, 16))
    assert e4.macs == 4 * e1.macs
    assert e4.fps == pytest.approx(4 / e4.latency_s)
    assert e4.dram_bytes["input"] >= 4 * e1.dram_bytes["input"] * 0.99


