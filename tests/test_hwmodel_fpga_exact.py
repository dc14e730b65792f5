"""The FPGA model on layers small enough to work out by hand.

Each expected number is derived in the comments from the formulas in hwmodel/fpga's
docstrings and docs/hwmodel-fpga.md (Zhang et al.'s engine, the tile traffic, the grid
rules), never read off the code.  The layers are tiny, so the file runs in well under a
second and can serve the mutation runs (CONTRIBUTING.md).
"""

from __future__ import annotations

import sys

import pytest

from hwmodel.fpga import Device, Engine, estimate
from hwmodel.fpga import engine as eng
from hwmodel.fpga.estimate import _collect, _text_table, format_cell
from hwmodel.fpga.graph import (
    NETWORK_INPUT,
    Edge,
    _pool_factor,
    block_count,
    build_graph,
    input_spans,
    is_blocked,
    max_span,
    nest,
    output_spans,
    tensor_shape,
)
from hwmodel.fpga.timeline import Phase, Transfer
from hwmodel.layers import Layer


def conv(name, cin, cout, h, w=None, k=1, s=1, p=0, groups=1, batch=1, **kw):
    w = h if w is None else w
    return Layer(name, "conv", batch, cin, h, w, cout, kernel_h=k, kernel_w=k, stride_h=s, stride_w=s, pad_h=p,
                 pad_w=p, groups=groups, **kw)


# ---------------------------------------------------------------------------- engine


def test_bits_words_and_dsp():
    assert eng.DSP_FAMILIES == {
        "DSP48E1": {32: 5.0, 16: 1.0, 8: 1.0}, "DSP48E2": {32: 5.0, 16: 1.0, 8: 0.5},
        "intel-vp": {32: 1.0, 16: 0.5, 8: 0.5}, "intel-sv": {32: 1.0, 16: 0.5, 8: 1 / 3},
    }
    assert [eng.word_bytes(b) for b in (32, 16, 8)] == [4, 2, 1]
    assert all(type(eng.word_bytes(b)) is int for b in (32, 16, 8))  # a byte count, not a float
    # ceil(Tm * Tn * DSP per MAC): 21 MACs -> 105, 21 and ceil(10.5) = 11 slices.
    assert [Engine(7, 3).dsp(b) for b in (32, 16, 8)] == [105, 21, 11]
    # By family: 21 MACs on DSP48E1 (8-bit does not pack: 21), on Intel blocks (float 21; two
    # 18x19 multipliers: ceil(10.5) = 11; three 9x9 on Stratix V: exactly 7, not 8).
    assert Engine(7, 3).dsp(8, "DSP48E1") == 21
    assert [Engine(7, 3).dsp(b, "intel-vp") for b in (32, 16, 8)] == [21, 11, 11]
    assert [Engine(7, 3).dsp(b, "intel-sv") for b in (32, 16, 8)] == [21, 11, 7]
    assert eng.dsp_per_mac(8, "intel-sv") == 1 / 3
    with pytest.raises(ValueError, match=r"family must be one of \['DSP48E1', 'DSP48E2', 'intel-sv', 'intel-vp'\]"):
        eng.dsp_per_mac(16, "DSP58")
    with pytest.raises(TypeError, match=r"bits must be an int \(8, 16 or 32\), got bool"):
        eng.check_bits(True)
    with pytest.raises(TypeError, match="got float"):
        eng.word_bytes(16.0)
    with pytest.raises(ValueError, match=r"bits must be 8, 16 or 32 \(32 = float, 16/8 = fixed point\), got 12"):
        eng.check_bits(12)


@pytest.mark.parametrize(
    ("args", "message"),
    [((0, 4), "Engine.tm must be an int >= 1, got 0"), ((4, True), "Engine.tn must be an int >= 1, got True"),
     ((4, 4, 0), "Engine.tr must be an int >= 1, got 0"),
     ((4, 4, None, 2.0), "Engine.tc must be an int >= 1, got 2.0")],
)
def test_engine_rejects_bad_sizes(args, message):
    with pytest.raises(ValueError, match=message):
        Engine(*args)


@pytest.mark.parametrize(
    ("fields", "error"),
    [
        (("", 1, 1, 1.0, 1.0), "Device.name must be a non-empty str, got ''"),
        ((5, 1, 1, 1.0, 1.0), "Device.name must be a non-empty str, got 5"),
        (("d", True, 1, 1.0, 1.0), "Device.dsp must be an int >= 1, got True"),
        (("d", 1, 0, 1.0, 1.0), "Device.bram_bytes must be an int >= 1, got 0"),
        (("d", 1, 1.5, 1.0, 1.0), "Device.bram_bytes must be an int >= 1, got 1.5"),
        (("d", 1, 1, True, 1.0), "Device.dram_gbps must be a number > 0, got True"),
        (("d", 1, 1, 0, 1.0), "Device.dram_gbps must be a number > 0, got 0"),
        (("d", 1, 1, 1.0, "fast"), "Device.freq_mhz must be a number > 0, got 'fast'"),
    ],
)
def test_device_rejects(fields, error):
    with pytest.raises(ValueError, match=error.replace("(", r"\(").replace(")", r"\)")):
        Device(*fields)
    assert Device("ok", 1, 1, 0.5, 1).freq_mhz == 1  # the smallest valid values


def test_engine_accepts_ones_and_open_tiles():
    assert Engine(1, 1, 1, 1).tr == 1
    assert (Engine(2, 3).tr, Engine(2, 3).tc) == (None, None)


# A grouped conv with everything different per axis: batch 2, 6 -> 4 channels in 2 groups,
# 9 x 7 input, 3x1 kernel, stride (2, 1), padding (1, 0), dilation (2, 1).
# out_h = (9 + 2 - 2*2 - 1)//2 + 1 = 4, out_w = (7 - 1)//1 + 1 = 7.
ODD = Layer("odd", "conv", 2, 6, 9, 7, 4, kernel_h=3, kernel_w=1, stride_h=2, stride_w=1, pad_h=1, pad_w=0,
            dilation_h=2, dilation_w=1, groups=2)


def test_conv_shape_by_hand():
    assert eng.conv_shape(ODD) == eng.ConvShape(groups=2, m=2, n=3, r=4, c=7, kh=3, kw=1, sh=2, sw=1, ext_h=5,
                                                ext_w=1, in_h=11, in_w=7, batch=2)


def test_compute_cycles_and_utilisation_by_hand():
    # Per group ceil(M/Tm) * ceil(N/Tn) * R * C * Kh * Kw, times groups and batch.
    # Engine(2, 1): ceil(2/2) * ceil(3/1) * 4*7 * 3 = 252 per group; x 2 groups x 2 images.
    assert eng.compute_cycles(ODD, Engine(2, 1)) == 4 * 252
    assert eng.compute_cycles(ODD, Engine(1, 2)) == 4 * (2 * 2 * 28 * 3)  # Tm and Tn are not interchangeable
    assert eng.compute_cycles(ODD, Engine(2, 1), rows=3, cols=5) == 4 * (3 * 3 * 5 * 3)
    assert eng.compute_cycles(ODD, Engine(2, 1), rows=3) == 4 * (3 * 3 * 7 * 3)
    assert eng.compute_cycles(ODD, Engine(2, 1), cols=5) == 4 * (3 * 4 * 5 * 3)
    # MACs 2 * 4 * 4*7 * 3 * 3 = 2016; Engine(3, 2): 1 * 2 * 28 * 3 = 168 per group, 672 in all.
    assert ODD.macs == 2016
    assert eng.utilisation(ODD, Engine(3, 2)) == pytest.approx(2016 / (6 * 672))


def test_tile_traffic_by_hand():
    # 6 -> 5 channels, 10 x 8, 3x3 stride 2 padding 1: out 5 x 4; padded input 12 x 10.
    layer = conv("t", 6, 5, 10, 8, k=3, s=2, p=1)
    t = eng.tile_traffic(layer, Engine(4, 4), tr=2, tc=3)
    b_in = 4 * (2 * 2 + 3 - 2) * (2 * 3 + 3 - 2)  # Tn * (S*Tr + K - S) * (S*Tc + K - S) = 4 * 5 * 7
    b_w = 4 * 4 * 9
    b_out = 4 * 2 * 3
    loads = 2 * 2 * (3 * 2)  # ceil(5/4) m tiles * ceil(6/4) n tiles * ceil(5/2) * ceil(4/3) spatial tiles
    stores = 2 * (3 * 2)
    assert (t.tr, t.tc) == (2, 3)
    assert (t.input_words, t.weight_words, t.output_words) == (loads * b_in, loads * b_w, stores * b_out)
    assert t.buffer_words == 2 * (b_in + b_w + b_out)
    assert t.words == loads * (b_in + b_w) + stores * b_out
    # Tiles and array sides larger than the layer are clipped to it: Tr = 5, Tc = 4, Tm = 5, Tn = 6.
    whole = eng.tile_traffic(layer, Engine(8, 8), tr=9, tc=9)
    assert (whole.tr, whole.tc) == (5, 4)
    assert whole.input_words == 6 * (2 * 5 + 1) * (2 * 4 + 1)
    assert (whole.weight_words, whole.output_words) == (5 * 6 * 9, 5 * 5 * 4)
    # Batch and groups multiply the loads: ODD with Engine(2, 2), 2 x 7 tiles.
    g = eng.tile_traffic(ODD, Engine(2, 2), tr=2, tc=7)
    # Per (image, group): m tiles 1, n tiles ceil(3/2) = 2, spatial tiles 2 * 1.
    # b_in = 2 * (2*2 + 5 - 2) * (1*7 + 1 - 1) = 2 * 7 * 7; b_w = 2*2*3; b_out = 2*2*7.
    assert (g.input_words, g.weight_words) == (4 * 4 * (2 * 7 * 7), 4 * 4 * 12)
    assert g.output_words == 4 * 2 * 28


def test_tile_candidates():
    # ceil(size / k) for k = 1..size, each once, ascending.
    assert eng._tile_candidates(7) == [1, 2, 3, 4, 7]
    assert eng._tile_candidates(6) == [1, 2, 3, 6]
    assert eng._tile_candidates(1) == [1]


# 2 -> 2 channels, 1x1, on 3 x 2: with Engine(2, 2), one m and n tile, so a Tr x Tc tiling moves
# ceil(3/Tr) * ceil(2/Tc) * (b_in + b_w + b_out) = tiles * (2*Tr*Tc + 4 + 2*Tr*Tc) words and buffers
# 2 * (4*Tr*Tc + 4):
#   (1,1): 6 * 8 = 48 / 16   (1,2): 3 * 12 = 36 / 24   (2,1): 4 * 12 = 48 / 24
#   (2,2): 2 * 20 = 40 / 40  (3,1): 2 * 16 = 32 / 32   (3,2): 1 * 28 = 28 / 56
SMALL = conv("s", 2, 2, 3, 2)


@pytest.mark.parametrize(("budget", "expected"), [(10**6, (3, 2, 28)), (56, (3, 2, 28)), (55, (3, 1, 32)),
                                                  (31, (1, 2, 36)), (23, (1, 1, 48)), (16, (1, 1, 48))])
def test_best_tiles_by_hand(budget, expected):
    best = eng.best_tiles(SMALL, Engine(2, 2), budget)
    assert (best.tr, best.tc, best.words) == expected


def test_best_tiles_edge_cases():
    assert eng.best_tiles(SMALL, Engine(2, 2), 15) is None  # even 1 x 1 tiles need 16 words
    # On a 2 x 2 map (1,2) and (2,1) both move 24 words in 24: the first found, (1, 2), stays.
    square = conv("q", 2, 2, 2)
    best = eng.best_tiles(square, Engine(2, 2), 39)
    assert (best.tr, best.tc, best.words) == (1, 2, 24)
    # An engine with its own Tr/Tc is used as it is.
    fixed = eng.best_tiles(SMALL, Engine(2, 2, tr=2, tc=1), 24)
    assert (fixed.tr, fixed.tc, fixed.words) == (2, 1, 48)
    assert eng.best_tiles(SMALL, Engine(2, 2, tr=2, tc=1), 23) is None
    assert eng.best_tiles(SMALL, Engine(2, 2, tr=2), 10**6).tc == 2  # Tc chosen, Tr kept


def test_engine_exploration_by_hand():
    # One 1x1 conv 3 -> 4 on 2 x 2 (4 outputs): cycles = ceil(4/Tm) * ceil(3/Tn) * 4.
    # 6 MACs fit: Tn=1, Tm<=4: 1*3*4 = 12; Tn=2, Tm<=3: 2*2*4 = 16; Tn=3, Tm<=2: 2*1*4 = 8 (fewest);
    # the smallest Tm that keeps 8 with Tn=3 is 2 (Tm=1 gives 16).
    layers = [conv("a", 3, 4, 2)]
    assert eng.explore_engine(layers, dsp_budget=6, bits=16) == Engine(2, 3)
    assert eng.explore_engine(layers, dsp_budget=3, bits=8) == Engine(2, 3)  # 3 / 0.5 = 6 MACs
    assert eng.explore_engine(layers, dsp_budget=34, bits=32) == Engine(2, 3)  # int(34 / 5) = 6 MACs
    # A big budget: Tm=4, Tn=3 in one pass (4 cycles); no bigger array is taken.
    assert eng.explore_engine(layers, dsp_budget=1000, bits=16) == Engine(4, 3)
    # 3 -> 3 with 4 MACs: Tn=1, Tm=3: 1*3 = 3; Tn=2, Tm=2: 2*2 = 4; Tn=3, Tm=1: 3*1 = 3.  Two arrays of
    # 3 MACs tie; the smaller key (3 MACs, Tm=1, Tn=3) wins.
    assert eng.explore_engine([conv("b", 3, 3, 1)], dsp_budget=4, bits=16) == Engine(1, 3)
    # The largest M and N of all layers bound the search: 8 -> 2 and 2 -> 8 with 64 MACs.
    assert eng.explore_engine([conv("c", 8, 2, 1), conv("d", 2, 8, 1)], dsp_budget=64, bits=16) == Engine(8, 8)
    assert eng.explore_engine(layers, dsp_budget=1, bits=16) == Engine(1, 1)  # one MAC is an array
    with pytest.raises(ValueError, match="a DSP budget of 4 cannot hold one 32-bit MAC"):
        eng.explore_engine(layers, dsp_budget=4, bits=32)
    with pytest.raises(ValueError, match="a DSP budget of 0 cannot hold one 16-bit MAC"):
        eng.explore_engine(layers, dsp_budget=0, bits=16)


# ---------------------------------------------------------------------------- estimate

# 16 -> 16 channels, 3x3 padding 1 on 32 x 32, 16-bit, Engine(16, 16) with one 32 x 32 tile,
# 200 MHz, 2 GB/s:
# * compute: 1 * 1 * 32*32 * 9 = 9216 cycles = 46.08 us;
# * words: input 16 * 34 * 34 = 18496, weights 16*16*9 = 2304, output 16 * 32 * 32 = 16384;
#   bytes x 2: 36992 + 4608 + 32768 = 74368 -> 37.184 us at 2 GB/s, so compute-bound;
# * buffer 2 * (18496 + 2304 + 16384) words = 148736 bytes;
# * MACs 16*32*32*16*9 = 2,359,296; GOPS = 2 * MACs / 46.08 us = 102.4 = the roof 2 * 256 * 200 MHz;
# * CTC = 4,718,592 / 74368 = 63.45 op/B; attainable = min(102.4, 63.45 * 2) = 102.4.
TOY = Device("toy", dsp=300, bram_bytes=1_000_000, dram_gbps=2.0, freq_mhz=200.0)
TOY_LAYER = conv("c1", 16, 16, 32, k=3, p=1)
TOY_ENGINE = Engine(16, 16, 32, 32)


def test_estimate_of_one_layer_by_hand():
    est = estimate([TOY_LAYER], device=TOY, engine=TOY_ENGINE)
    assert (est.schedule, est.bits, est.freq_mhz, est.dsp_used, est.engine) == ("layer", 16, 200.0, 256, TOY_ENGINE)
    assert est.dram_bytes == {"input": 36992, "weights": 4608, "output": 32768, "intermediate": 0}
    assert est.total_dram_bytes == 74368
    # One 32 x 32 tile: one step, so nothing overlaps.  Its reads (36992 + 4608 = 41600 bytes at
    # 2 GB/s: 20.8 us) come before the 9216 cycles (46.08 us at 200 MHz), its 32768-byte write
    # (16.384 us) after: 83.264 us.
    assert est.latency_s == pytest.approx(20.8e-6 + 46.08e-6 + 16.384e-6, rel=1e-12)
    assert est.fps == pytest.approx(1 / 83.264e-6, rel=1e-12)
    assert est.macs == 2_359_296 and est.extra_macs == 0
    assert est.gops == pytest.approx(4_718_592 / 83.264e-6 / 1e9, rel=1e-12)
    assert est.compute_roof_gops == pytest.approx(102.4)
    assert est.ctc == pytest.approx(4_718_592 / 74368)
    assert est.sustained_gbps == pytest.approx(2.0, rel=1e-12)  # an ideal DRAM: its peak for every burst
    assert est.attainable_gops == pytest.approx(102.4)  # CTC 63.4 x 2 GB/s = 127 > the roof
    assert est.buffer_bytes == 148736 and est.fits
    assert est.groups == [{
        "group": 0, "layers": "c1", "n": 1, "mode": "layer", "units": 1, "dram_MB": 0.074368, "inter_MB": 0.0,
        "weights_MB": 0.004608, "buffer_KB": 148.736, "ctc": pytest.approx(4_718_592 / 74368),
        "ms": pytest.approx(0.083264, rel=1e-12), "compute_ms": pytest.approx(0.04608, rel=1e-12),
        "bound": "compute", "detail": "Tr=32 Tc=32"}]
    assert est.layers == [{
        "layer": "c1", "kind": "conv", "group": 0, "in": "16x32x32", "out": "16x32x32", "k/s": "3x3/1", "blocks": 1,
        "MMAC": 2.359296, "extra_MMAC": 0.0, "cycles": 9216, "util": 1.0}]
    assert est.summary() == (
        "layer on toy (16-bit, Tm=16 Tn=16, 256/300 DSP, 200 MHz): 0.08 ms, 12009.99 fps, 56.7 GOPS (roof 102, "
        "CTC 63.4 op/B, attainable 102); DRAM 0.07 MB (input 0.04, weights 0.00, output 0.03, intermediate 0.00); "
        "buffer 0.15 of 1.00 MB (fits)")
    lines = str(est).splitlines()
    # summary, blank, the group table (header, rule, one row), blank, the layer table (3 lines), blank,
    # "Assumptions:" and one line per assumption.
    assert lines[0] == est.summary() and lines[1] == "" and lines[5] == "" and lines[9] == ""
    assert lines[2].startswith("group  layers  n  mode") and lines[6].startswith("layer  kind  group")
    assert lines[10] == "Assumptions:" and lines[11:] == [f"- {a}" for a in est.assumptions]
    assert len(est.assumptions) == 7
    assert "DRAM at its 2 GB/s peak for every burst" in est.assumptions[1]
    assert est.assumptions[0].startswith("one Tm=16 x Tn=16 MAC array for every layer at 200 MHz, 1 DSP48E2 DSP per")


def test_summary_units_on_a_big_batch():
    # 200,000 images of TOY_LAYER: every byte count and the time scale by 200,000, so the printed
    # megabytes and milliseconds have digits a wrong unit would change.
    many = conv("c1", 16, 16, 32, k=3, p=1, batch=200_000)
    big = Device("big", dsp=300, bram_bytes=7_777_777_777, dram_gbps=2.0, freq_mhz=200.0)
    est = estimate([many], device=big, engine=TOY_ENGINE)
    # 9216 * 2e5 cycles at 200 MHz = 9.216 s; bytes 36992, 4608, 32768 (x 2e5) = 7398.4, 921.6, 6553.6 MB.
    # 200,000 steps: only the first image's reads (20.8 us) and the last one's write (16.384 us) are
    # not hidden behind compute: 9.216037184 s, 21701.30 fps.
    assert est.summary() == (
        "layer on big (16-bit, Tm=16 Tn=16, 256/300 DSP, 200 MHz): 9216.04 ms, 21701.30 fps, 102.4 GOPS "
        "(roof 102, CTC 63.4 op/B, attainable 102); DRAM 14873.60 MB (input 7398.40, weights 921.60, "
        "output 6553.60, intermediate 0.00); buffer 0.15 of 7777.78 MB (fits)")


def test_estimate_memory_bound_and_not_fitting():
    # At 1 GB/s the 74368 bytes take 74.368 us > 46.08 us: memory-bound.  One tile, so the reads
    # (41.6 us), the compute (46.08 us) and the write (32.768 us) follow each other.
    slow = Device("slow", dsp=300, bram_bytes=100_000, dram_gbps=1.0, freq_mhz=200.0)
    est = estimate([TOY_LAYER], device=slow, engine=TOY_ENGINE, freq_mhz=200)
    assert est.groups[0]["bound"] == "memory"
    assert est.latency_s == pytest.approx(41.6e-6 + 46.08e-6 + 32.768e-6, rel=1e-12)
    assert est.attainable_gops == pytest.approx(4_718_592 / 74368 * 1.0)  # below the 102.4 roof
    # The fixed 32 x 32 tile needs 148,736 bytes of the 100,000: the estimate says it does not fit.
    assert not est.fits and est.summary().endswith("buffer 0.15 of 0.10 MB (DOES NOT FIT)")
    # freq_mhz overrides the device's clock: 100 MHz doubles the compute time.
    half = estimate([TOY_LAYER], device=TOY, engine=TOY_ENGINE, freq_mhz=100)
    assert half.latency_s == pytest.approx(20.8e-6 + 92.16e-6 + 16.384e-6, rel=1e-12) and half.freq_mhz == 100.0


def test_tiles_overlap_transfers_with_compute():
    # TOY_LAYER in 8 x 32 output tiles: 4 steps.  Input tile (8 - 1) + 3 = 10 rows x 34 padded columns x
    # 16 channels = 5440 words, weight tile 16 * 16 * 9 = 2304, output tile 16 * 8 * 32 = 4096, each moved
    # 4 times: reads 4 * (5440 + 2304) * 2 = 61952 bytes (30.976 us at 2 GB/s), writes 32768 (16.384 us).
    # The first step's reads (7.744 us) and the last one's write (4.096 us) are exposed; the rest
    # (35.52 us) runs beside the compute.  The DRAM's 47.36 us outlast the 46.08 us of compute, so the
    # pace is the DRAM's, and the last step's compute (11.52 us) sits between its read and its write:
    # 7.744 + (35.52 + 11.52) + 4.096 = 58.88 us.
    est = estimate([TOY_LAYER], device=TOY, engine=Engine(16, 16, 8, 32))
    assert est.total_dram_bytes == 61952 + 32768
    assert est.latency_s == pytest.approx(7.744e-6 + 47.04e-6 + 4.096e-6, rel=1e-12)
    assert est.groups[0]["bound"] == "memory"
    # At 1 GB/s the 94.72 us of transfers set the pace: 15.488 + (94.72 - 15.488 - 8.192 + 11.52)
    # + 8.192 = 106.24 us.
    slow = Device("slow", dsp=300, bram_bytes=1_000_000, dram_gbps=1.0, freq_mhz=200.0)
    est = estimate([TOY_LAYER], device=slow, engine=Engine(16, 16, 8, 32))
    assert est.latency_s == pytest.approx(106.24e-6, rel=1e-12) and est.groups[0]["bound"] == "memory"
    # At 8 GB/s (11.84 us of transfers) the compute sets it: 1.936 + 46.08 + 1.024 = 49.04 us.
    fast = Device("fast", dsp=300, bram_bytes=1_000_000, dram_gbps=8.0, freq_mhz=200.0)
    est = estimate([TOY_LAYER], device=fast, engine=Engine(16, 16, 8, 32))
    assert est.latency_s == pytest.approx(49.04e-6, rel=1e-12) and est.groups[0]["bound"] == "compute"


def test_estimate_batch_and_explored_engine():
    # A batch of 3 takes 3x the cycles and reports 3 images per latency; the second and third
    # images' transfers hide behind compute, the first's reads (20.8 us) and the last's write
    # (16.384 us) do not.
    three = conv("c1", 16, 16, 32, k=3, p=1, batch=3)
    est = estimate([three], device=TOY, engine=TOY_ENGINE)
    assert est.latency_s == pytest.approx(20.8e-6 + 3 * 46.08e-6 + 16.384e-6, rel=1e-12)
    assert est.fps == pytest.approx(3 / est.latency_s)
    # No engine given: explored for the 300 DSP, 16-bit: Tm * Tn <= 300 with the fewest cycles,
    # 16 x 16 (256 MACs) does the layer in one pass per pixel and tap; nothing smaller does.
    assert estimate([TOY_LAYER], device=TOY).engine == Engine(16, 16)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"schedule": "fused"}, ValueError, r"schedule must be one of \['layer', 'block-fused', 'tiled-fused'\]"),
        ({"objective": "speed"}, ValueError, r"objective must be one of \['traffic', 'intermediate'\], got 'speed'"),
        ({"freq_mhz": True}, ValueError, "freq_mhz must be a number > 0, got True"),
        ({"freq_mhz": -5.0}, ValueError, "freq_mhz must be a number > 0, got -5.0"),
        ({"engine": (16, 16)}, TypeError, "engine must be a hwmodel.fpga.Engine or None, got tuple"),
        ({"engine": Engine(20, 20)}, ValueError,
         "engine Tm=20 x Tn=20 at 16 bits needs 400 DSP48E2 DSPs, but toy has 300"),
        ({"schedule": "block-fused"}, ValueError, "needs a network with block convolutions"),
    ],
)
def test_estimate_rejects(kwargs, error, match):
    with pytest.raises(error, match=match):
        estimate([TOY_LAYER], **{"device": TOY, **kwargs})


def test_estimate_device_type_message():
    with pytest.raises(TypeError, match=r"^device must be a preset name or a hwmodel.fpga.Device, got int$"):
        estimate([TOY_LAYER], device=706)


def test_estimate_layer_lists_and_modules():
    assert estimate((TOY_LAYER,), device=TOY, engine=TOY_ENGINE).macs == 2_359_296  # a tuple is a layer list
    with pytest.raises(ValueError, match="^model_or_layers is an empty layer list$"):
        estimate([], device=TOY)
    with pytest.raises(TypeError, match="must be an nn.Module or a list of hwmodel.Layer, got str"):
        estimate("c1", device=TOY)
    with pytest.raises(TypeError, match="got list"):
        estimate([TOY_LAYER, "c2"], device=TOY)
    nn = pytest.importorskip("torch.nn")
    with pytest.raises(ValueError, match=r"input_shape is required .* e.g. \(1, 3, 224, 224\)"):
        estimate(nn.Conv2d(3, 4, 1), device=TOY)
    with pytest.raises(ValueError, match="the model has no conv or linear layers"):
        estimate(nn.Sequential(nn.ReLU()), input_shape=(1, 3, 4, 4), device=TOY)
    traced = estimate(nn.Conv2d(16, 16, 3, padding=1), input_shape=(1, 16, 32, 32), device=TOY, engine=TOY_ENGINE)
    assert traced.total_dram_bytes == 74368


def test_table_formatting():
    assert format_cell(0.012345) == "0.0123"
    assert format_cell(999.4) == "999"
    assert format_cell(1000.0) == "1,000"  # from 1000 up: thousands separators, no exponent
    assert format_cell(-1234.7) == "-1,235"
    assert format_cell(1234567) == "1,234,567"
    assert format_cell(True) == "True" and format_cell("x") == "x"
    assert _text_table([]) == ""
    rows = [{"a": 1, "long name": "x"}, {"a": 12345, "long name": "yy"}]
    assert _text_table(rows) == ("a       long name\n"
                                 "------  ---------\n"
                                 "1       x        \n"
                                 "12,345  yy       ")


# ---------------------------------------------------------------------------- graph


def test_pool_factor_by_hand():
    # The integer p with floor(src / p) == dst.
    assert [_pool_factor(8, 4), _pool_factor(7, 3), _pool_factor(7, 2), _pool_factor(4, 4)] == [2, 2, 3, 1]
    assert _pool_factor(3, 4) is None  # no pooling grows a map
    assert _pool_factor(6, 4) is None  # 6 // 1 = 6, and no p gives 4


def test_tensor_shapes_and_spans():
    a = conv("a", 3, 8, 9, 7, k=3, s=2, p=1)  # out (9+2-3)//2+1 = 5 by (7+2-3)//2+1 = 4
    assert tensor_shape([a], NETWORK_INPUT) == (3, 9, 7)
    assert tensor_shape([a], 0) == (8, 5, 4)
    assert input_spans(a) == (((0, 9),), ((0, 7),)) and output_spans(a) == (((0, 5),), ((0, 4),))
    assert block_count(a) == 1 and not is_blocked(a)
    # Blocks of 4 along H (4, 4, 1) and of 3 along W (3, 3, 1), 3x3 stride 2 padding 1 per block:
    # outputs per block (b + 2 - 3)//2 + 1 -> 2, 2, 1 rows and 2, 2, 1 columns.
    b = conv("b", 3, 8, 9, 7, k=3, s=2, p=1, block_rows=((0, 4), (4, 8), (8, 9)), block_cols=((0, 3), (3, 6), (6, 7)))
    assert output_spans(b) == (((0, 2), (2, 4), (4, 5)), ((0, 2), (2, 4), (4, 5)))
    assert block_count(b) == 9 and is_blocked(b)
    only_rows = conv("r", 3, 8, 9, 7, k=3, s=2, p=1, block_rows=((0, 4), (4, 9)))
    assert input_spans(only_rows) == (((0, 4), (4, 9)), ((0, 7),))
    assert output_spans(only_rows) == (((0, 2), (2, 5)), ((0, 4),))  # (5 + 2 - 3)//2 + 1 = 3 for the second
    assert block_count(only_rows) == 2 and is_blocked(only_rows)
    assert is_blocked(conv("c", 3, 8, 9, 7, k=3, s=2, p=1, block_cols=((0, 3), (3, 7))))
    assert max_span(((0, 4), (4, 9))) == 5
    # No padding: (4 - 3)//1 + 1 = 2 outputs per block of 4; padding 2: (4 + 4 - 3) + 1 = 6.
    assert output_spans(conv("n", 1, 1, 8, k=3, block_rows=BLOCKS))[0] == ((0, 2), (2, 4))
    assert output_spans(conv("w", 1, 1, 8, k=3, p=2, block_rows=BLOCKS))[0] == ((0, 6), (6, 12))


def test_nesting_along_one_dimension():
    halves = ((0, 4), (4, 8))
    quarters = ((0, 2), (2, 4), (4, 6), (6, 8))
    whole = ((0, 8),)
    assert nest(halves, 8, halves, 1, False) == "same"
    assert nest(quarters, 8, halves, 1, False) == "coarser"  # a consumer block spans two producer blocks
    assert nest(halves, 8, quarters, 1, False) == "finer"
    assert nest(halves, 8, ((0, 3), (3, 8)), 1, False) is None  # straddles the cut at 4
    # After 2x pooling, consumer block starts are pulled back to producer coordinates (x2).
    assert nest(halves, 8, ((0, 2), (2, 4)), 2, False) == "same"
    assert nest(quarters, 8, ((0, 1), (1, 4)), 2, False) == "coarser"
    # Flattening reads the whole map: the same block when the producer has one, else coarser.
    assert nest(whole, 8, whole, 1, True) == "same"
    assert nest(halves, 8, whole, 1, True) == "coarser"


def test_graph_of_a_small_network():
    layers = [
        conv("stem", 3, 8, 16, k=3, p=1),  # 8 x 16 x 16
        conv("down", 8, 8, 8, k=3, p=1),  # reads the stem after 2x pooling (16 -> 8)
        conv("odd", 8, 4, 5, k=1),  # 8 // 5 = 1 and 16 // 3 = 5: the stem pooled by 3
        Layer("fc", "linear", 1, 4 * 2 * 2, 1, 1, 10),  # flattens odd's 4 x 5 x 5 after 2x pooling (2 x 2)
    ]
    g = build_graph(layers)
    assert g.inputs == (Edge(NETWORK_INPUT, 0, 1, 1), Edge(0, 1, 2, 2), Edge(0, 2, 3, 3), Edge(2, 3, 2, 2, True))
    assert g.consumers(0) == [1, 2] and g.consumers(1) == []
    # "down" is read by nobody and is not last: taken to be added into the next tensor of its shape,
    # or else (none here) into the next layer.
    assert g.merges == ((1, 2),)


def test_graph_residuals_concatenation_and_errors():
    a = conv("a", 4, 4, 8, k=3, p=1)
    b = conv("b", 4, 4, 8, k=3, p=1)
    g = build_graph([a, b, conv("c", 4, 6, 8)])
    assert [e.source for e in g.inputs] == [NETWORK_INPUT, 0, 1]
    assert g.merges == ()
    # Two branches off a: b3 (4 -> 3) and c5 (4 -> 5, which cannot read b3's 3 channels, so it reads a);
    # e reads 8 channels, which only the concatenation [b3, c5] has.
    g = build_graph([a, conv("b3", 4, 3, 8), conv("c5", 4, 5, 8), conv("e", 8, 2, 8)])
    assert [x.source for x in g.inputs] == [NETWORK_INPUT, 0, 0, 2]
    assert g.inputs[3] == Edge(2, 3, 1, 1, False) and g.consumers(2) == [3]
    assert g.merges == ((1, 2),)
    # A ResNet shortcut: x2's output is read by nobody, so it is added into the next tensor of
    # its shape, the downsample's (8 x 4 x 4), which the next layer reads.
    x1 = conv("x1", 4, 8, 8, k=3, s=2, p=1)  # (8 + 2 - 3)//2 + 1 = 4
    x2 = conv("x2", 8, 8, 4, k=3, p=1)
    ds = conv("ds", 4, 8, 8, k=1, s=2)  # (8 - 1)//2 + 1 = 4, reads the network input
    g = build_graph([x1, x2, ds, conv("n", 8, 2, 4)])
    assert [e.source for e in g.inputs] == [NETWORK_INPUT, 0, NETWORK_INPUT, 2]
    assert g.merges == ((1, 2),)
    # An unread tensor with no later tensor of its shape is folded into the next layer's output.
    g = build_graph([conv("p", 4, 6, 8), conv("q", 4, 4, 8), conv("r", 4, 2, 8)])
    assert [e.source for e in g.inputs] == [NETWORK_INPUT, NETWORK_INPUT, 1]
    assert g.merges == ((0, 1),)
    with pytest.raises(ValueError, match=r"cannot tell where layer 1 \('z', input 5x8x8\) reads from"):
        build_graph([a, conv("z", 5, 2, 8)])


def test_graph_fuse_halves():
    stem = conv("stem", 3, 8, 12, k=3, p=1)
    row = Layer("f.row", "fuse_row", 1, 4, 12, 12, 4, 1, 3, 1, 1, 0, 1, 1, 1, 4)
    col = Layer("f.col", "fuse_col", 1, 4, 12, 12, 4, 3, 1, 1, 1, 1, 0, 1, 1, 4)
    point = conv("pw", 8, 16, 12)
    g = build_graph([stem, row, col, point])
    # Both halves read a channel slice of the stem; the pointwise conv reads their concatenation.
    assert [e.source for e in g.inputs] == [NETWORK_INPUT, 0, 0, 2]
    assert g.inputs[3] == Edge(2, 3, 1, 1, False) and g.consumers(0) == [1, 2]
    # A column conv alone (no row half before it) reads its channel slice too.
    alone = build_graph([stem, col])
    assert alone.inputs[1] == Edge(0, 1, 1, 1, False)
    assert g.merges == ((1, 2),)
    # Full variant: both halves read all 8 channels, the 1x1 reads 16.
    row8 = Layer("g.row", "fuse_row", 1, 8, 12, 12, 8, 1, 3, 1, 1, 0, 1, 1, 1, 8)
    col8 = Layer("g.col", "fuse_col", 1, 8, 12, 12, 8, 3, 1, 1, 1, 1, 0, 1, 1, 8)
    g = build_graph([stem, row8, col8, conv("pw", 16, 4, 12)])
    assert [e.source for e in g.inputs] == [NETWORK_INPUT, 0, 0, 2] and g.merges == ((1, 2),)


# ---------------------------------------------------------------------------- schedules

from hwmodel.fpga import schedule as sch  # noqa: E402
from hwmodel.fpga.graph import build_graph as _graph  # noqa: E402


def _ctx(layers, engine, bram_bytes, bits=16):
    return sch.Context(_graph(layers), engine, bits, bram_bytes)


def test_plan_layer_by_hand():
    # Two 1x1 convs 2 -> 2 on 3 x 2 (SMALL above), Engine(2, 2), 16-bit, 62 bytes = 31 words of BRAM:
    # the best tiling that fits is (1, 2): 3 tiles of input 4, weights 4, output 4 words; buffer 24 words.
    layers = [conv("a", 2, 2, 3, 2), conv("b", 2, 2, 3, 2)]
    ctx = _ctx(layers, Engine(2, 2), 62)
    first, second = sch.plan_layer(ctx, 0), sch.plan_layer(ctx, 1)
    assert first.traffic == {"input": 24, "weights": 24, "output": 0, "intermediate": 24}  # bytes
    assert second.traffic == {"input": 0, "weights": 24, "output": 24, "intermediate": 24}
    assert (first.start, first.stop, first.mode, first.buffer_bytes, first.cycles) == (0, 1, "layer", 48, 6)
    assert (first.units, first.fits, first.detail) == (3, True, "Tr=1 Tc=2")
    assert (first.layer_cycles, first.layer_extra_macs, first.dram_bytes) == ([6], [0], 72)
    # 30 bytes = 15 words: not even 1 x 1 tiles (16 words) fit; the plan says so and costs 1 x 1 tiles:
    # 6 tiles of 2 + 4 + 2 words.
    tight = sch.plan_layer(_ctx(layers, Engine(2, 2), 30), 0)
    assert not tight.fits and tight.detail == "Tr=1 Tc=1" and tight.buffer_bytes == 32
    assert tight.traffic == {"input": 24, "weights": 48, "output": 0, "intermediate": 24}
    # An engine with its own tiles that do not fit keeps them: 2 x 1 tiles, 4 of them.
    fixed = sch.plan_layer(_ctx(layers, Engine(2, 2, 2, 1), 30), 1)
    assert not fixed.fits and (fixed.detail, fixed.units) == ("Tr=2 Tc=1", 4)
    # 32-bit words: the same 31-word budget is 124 bytes, the same tiling, twice the bytes.
    wide = sch.plan_layer(_ctx(layers, Engine(2, 2), 124, bits=32), 0)
    assert wide.traffic == {"input": 48, "weights": 48, "output": 0, "intermediate": 48}


def test_plan_layer_reads_back_a_residual():
    # The ResNet shortcut of the graph test: x2's output (8 x 4 x 4 = 128 words) is added to the
    # downsample's, so costing "ds" reads it back, and x2 writes it as intermediate.
    layers = [conv("x1", 4, 8, 8, k=3, s=2, p=1), conv("x2", 8, 8, 4, k=3, p=1), conv("ds", 4, 8, 8, k=1, s=2),
              conv("n", 8, 2, 4)]
    ctx = _ctx(layers, Engine(8, 8), 10**6)
    ds, x2 = sch.plan_layer(ctx, 2), sch.plan_layer(ctx, 1)
    plain = eng.best_tiles(layers[2], Engine(8, 8), 10**6 // 2)
    assert ds.traffic["input"] == 2 * plain.input_words  # the network input
    assert ds.traffic["intermediate"] == 2 * (plain.output_words + 128)
    assert x2.traffic["output"] == 0 and x2.traffic["intermediate"] > 0


def _wp(plan):
    return plan.words, plan.buffer_words, plan.note


def test_weights_on_chip_pinned_and_streamed():
    # Two 3x3 convs 2 -> 4 -> 2: 72 weights each.  Engine(1, 1) streams a 2 * 1 * 1 * 9 = 18-word tile.
    layers = [conv("a", 2, 4, 8, k=3, p=1), conv("b", 4, 2, 8, k=3, p=1)]
    live = [{0, 1}, {0, 1}]
    ctx = _ctx(layers, Engine(1, 1), 2 * 272)  # 272 words
    # Activations 128 at the peak + 144 weights fit in 272: everything on chip, each weight read once.
    assert _wp(sch._weights(ctx, 0, 2, [128, 100], [4, 4], live)) == (144, 272, "weights on chip")
    # 271 words: stream (128 + 18 = 146), pin layer a (146 + 72 = 218 <= 271), not b (290).
    ctx = _ctx(layers, Engine(1, 1), 2 * 271)
    assert _wp(sch._weights(ctx, 0, 2, [128, 128], [4, 4], live)) == (72 + 72 * 4, 218,
                                                                 "weights streamed, 1 of 2 layers pinned")
    # The most re-read layer is pinned first: b runs 5 times, a 4 times.
    assert _wp(sch._weights(ctx, 0, 2, [128, 128], [4, 5], live)) == (72 * 4 + 72, 218,
                                                                 "weights streamed, 1 of 2 layers pinned")
    # 217 words: nothing can be pinned; every execution reads its weights.
    ctx = _ctx(layers, Engine(1, 1), 2 * 217)
    assert _wp(sch._weights(ctx, 0, 2, [128, 128], [4, 4], live)) == (72 * 8, 146, "weights streamed")
    # A layer that runs once is never pinned (nothing to save), and pinning only checks its live layers.
    ctx = _ctx(layers, Engine(1, 1), 2 * 250)
    assert _wp(sch._weights(ctx, 0, 2, [200, 100], [1, 4], [{0}, {1}])) == (72 + 72, 218,
                                                                       "weights streamed, 1 of 2 layers pinned")
    # Even where it would fit (300 words: 218 + 72): a layer run once stays streamed.
    ctx = _ctx(layers, Engine(1, 1), 2 * 300)
    assert _wp(sch._weights(ctx, 0, 2, [200, 100], [1, 4], [{0}, {1}])) == (72 + 72, 218,
                                                                       "weights streamed, 1 of 2 layers pinned")
    # Run twice, it is pinned: 72 read once instead of twice.
    assert _wp(sch._weights(ctx, 0, 2, [200, 100], [2, 4], [{0}, {1}])) == (72 + 72, 290,
                                                                       "weights streamed, 2 of 2 layers pinned")


BLOCKS = ((0, 4), (4, 8))


def _blocked(name, cin, cout, **kw):
    return conv(name, cin, cout, 8, k=3, p=1, block_rows=BLOCKS, block_cols=BLOCKS, **kw)


def test_plan_block_by_hand():
    # a: 2 -> 4, b: 4 -> 2, both 3x3 padding 1 on 8 x 8 in 2 x 2 blocks of 4: the grids are the same.
    # Buffers (words): a's input block streamed in, double-buffered 2 * 2*4*4 = 64; a's output block
    # 4*4*4 = 64, live while a and b run; b's output 2*4*4 = 32 plus its drain buffer 32.
    # Live sums: at a 64 + 64 = 128, at b 64 + 32 + 32 = 128.  Weights 72 + 72 fit beside them.
    layers = [_blocked("a", 2, 4), _blocked("b", 4, 2)]
    ctx = _ctx(layers, Engine(4, 2), 2 * 272)
    plan = sch.plan_block(ctx, 0, 2)
    # Traffic: the 2*8*8 input and the 2*8*8 output once, the weights once; x 2 bytes.
    assert plan.traffic == {"input": 256, "weights": 288, "output": 256, "intermediate": 0}
    assert (plan.mode, plan.buffer_bytes, plan.units, plan.detail) == ("block", 544, 4, "blocks 4; weights on chip")
    # Engine(4, 2): a ceil(4/4) * ceil(2/2) * 64 * 9 = 576; b ceil(2/4) * ceil(4/2) * 576 = 1152.
    assert (plan.cycles, plan.layer_cycles, plan.layer_extra_macs) == (1728, [576, 1152], [0, 0])
    # One word less: the weights must stream (Engine(4, 2) streams 2*4*2*9 = 144 words), which
    # needs 128 + 144 = 272 words: no longer fits.
    assert sch.plan_block(_ctx(layers, Engine(4, 2), 2 * 271), 0, 2) is None
    # Engine(1, 1) streams 18 words: 146, a pinned (218), b re-read per block: 72 + 4 * 72 words.
    small = sch.plan_block(_ctx(layers, Engine(1, 1), 2 * 271), 0, 2)
    assert small.traffic["weights"] == 2 * (72 + 4 * 72) and small.buffer_bytes == 2 * 218
    assert small.detail == "blocks 4; weights streamed, 1 of 2 layers pinned"
    # b alone: it reads a's whole output (4 x 8 x 8 = 256 words) back from DRAM and writes its own.
    single = sch.plan_block(ctx, 1, 2)
    assert single.traffic == {"input": 0, "weights": 144, "output": 256, "intermediate": 512}


def test_plan_block_coarser_consumer_and_refusals():
    # a (blocks of 4 on 8 x 8) feeds c on 4 x 4 after 2x2 pooling, unblocked: c's one block spans
    # both of a's blocks along each axis ("coarser"), so a's 4 x 4 x 4 output blocks are assembled into
    # c's 4 x 4 x 4 input on chip.
    a = _blocked("a", 2, 4)
    c = conv("c", 4, 2, 4, k=3, p=1)
    ctx = _ctx([a, c], Engine(4, 2), 10**6)
    plan = sch.plan_block(ctx, 0, 2)
    assert plan is not None and plan.traffic["intermediate"] == 0
    assert plan.detail == "blocks 4->1; weights on chip" and plan.units == 4
    # At a: its input block streamed in (2 * 2*4*4 = 64) + the assembled 4 x 4 x 4 map (64); at c: the
    # map (64) + c's output 2*4*4 = 32 and its drain buffer 32.  Both 128, plus 144 weights.
    assert plan.buffer_bytes == 2 * (128 + 144)
    # Straddling grids (blocks of 3 against blocks of 4) need halos: refused.
    straddle = conv("s", 4, 2, 8, k=3, p=1, block_rows=((0, 3), (3, 8)), block_cols=BLOCKS)
    assert sch.plan_block(_ctx([a, straddle], Engine(4, 2), 10**6), 0, 2) is None
    # Too little BRAM for the activations: refused.
    assert sch.plan_block(_ctx([a, c], Engine(4, 2), 100), 0, 2) is None


def test_weight_live_ranges():
    # Block counts 4, 4, 1 (a, b blocked; c unblocked after pooling): the coarsest level runs once,
    # so a's and b's weights need to stay only while the 4-block run lasts.
    a, b = _blocked("a", 2, 4), _blocked("b", 4, 4)
    c = conv("c", 4, 2, 4, k=3, p=1)
    ctx = _ctx([a, b, c], Engine(4, 2), 10**6)
    assert sch._weight_live(ctx, 0, 3) == [{0, 1}, {0, 1}, {2}]
    assert sch._weight_live(ctx, 1, 3) == [{0}, {1}]
    # All layers blocked (the coarsest level repeats): every layer's weights stay throughout.
    assert sch._weight_live(ctx, 0, 2) == [{0, 1}, {0, 1}]
    # Also when the coarsest level has two blocks (4 blocks, then 2 row blocks).
    two = conv("two", 4, 4, 8, k=3, p=1, block_rows=BLOCKS)
    ctx = _ctx([a, two], Engine(4, 2), 10**6)
    assert [block_count(x) for x in ctx.layers] == [4, 2]
    assert sch._weight_live(ctx, 0, 2) == [{0, 1}, {0, 1}]
    # 1, 4, 4, 1: the middle run.
    d = conv("d", 2, 4, 8, k=3, p=1)
    e = conv("e", 4, 2, 4, k=3, p=1)
    ctx = _ctx([d, _blocked("a", 4, 4), _blocked("b", 4, 4), e], Engine(4, 2), 10**6)
    assert sch._weight_live(ctx, 0, 4) == [{0}, {1, 2}, {1, 2}, {3}]
    # Runs at either end of the group: 1, 4, 4 and 4, 1, 4.
    assert sch._weight_live(ctx, 0, 3) == [{0}, {1, 2}, {1, 2}]
    ctx = _ctx([_blocked("a", 2, 4), conv("u", 4, 4, 8, k=3, p=1), _blocked("b", 4, 4)], Engine(4, 2), 10**6)
    assert sch._weight_live(ctx, 0, 3) == [{0}, {1}, {2}]


# Two 1 -> 1 3x3 convs, padding 1, on 4 x 4; Engine(1, 1); 16-bit.
TWO = [conv("t0", 1, 1, 4, k=3, p=1), conv("t1", 1, 1, 4, k=3, p=1)]


def test_pull_back_and_tile_intervals():
    assert sch._tile_intervals(4, 2) == [(0, 2), (2, 4)]
    assert sch._tile_intervals(5, 2) == [(0, 2), (2, 4), (4, 5)]
    # Output rows [a, b) of a 3x3 padding 1 conv read rows [a - 1, b + 1) clipped to the map.
    assert sch._pull_back(TWO[0], [(0, 2), (2, 4)], "h") == [(0, 3), (1, 4)]
    # Stride 2, kernel 3, padding 1 along W of a 9-wide map: [a, b) -> [2a - 1, 2(b-1) - 1 + 3).
    wide = conv("w", 1, 1, 5, 9, k=3, s=2, p=1)
    assert sch._pull_back(wide, [(0, 2), (2, 5)], "w") == [(0, 4), (3, 9)]
    # Dilation 2 (span 5), padding 2: output rows 2, 3 read input rows 0, 2, 4 and 1, 3, 5: [0, 6).
    dil = Layer("d", "conv", 1, 1, 9, 9, 1, 3, 3, 1, 1, 2, 2, 2, 2)
    assert sch._pull_back(dil, [(2, 4)], "h") == [(0, 6)]


def test_plan_tiled_by_hand():
    # Whole-map tile (t = 4): no recompute.  Peak: max over layers of C_in * in tile + C_out * out tile
    # = 16 + 16, plus the DRAM-facing input and output tiles 16 + 16 = 64 words; weights 9 + 9 beside
    # them: 82 words = 164 bytes.  Traffic: input 16, output 16, weights 18 words -> 100 bytes.
    plan = sch.plan_tiled(_ctx(TWO, Engine(1, 1), 164), 0, 2)
    assert plan.traffic == {"input": 32, "weights": 36, "output": 32, "intermediate": 0}
    assert (plan.units, plan.extra_macs, plan.detail) == (1, 0, "tile 4x4; weights on chip")
    assert (plan.cycles, plan.layer_cycles, plan.buffer_bytes) == (288, [144, 144], 164)
    # 163 bytes: the whole map no longer fits with its weights, 2 x 2 tiles of 2 do.  The last conv's
    # tiles [0,2) [2,4) need t0 rows [0,3) [1,4) (6 computed of 4: 2 recomputed per axis), which need
    # the input rows [0,4) twice (8 read of 4).  Peak: t0 16 + 9 = 25, plus 16 + 4 at the ends = 45, +18.
    plan = sch.plan_tiled(_ctx(TWO, Engine(1, 1), 163), 0, 2)
    assert (plan.units, plan.detail, plan.buffer_bytes) == (4, "tile 2x2; weights on chip", 2 * 63)
    assert plan.traffic == {"input": 2 * 64, "weights": 36, "output": 32, "intermediate": 0}
    # t0 computes 6 x 6 outputs instead of 4 x 4: (36 - 16) * 9 MACs recomputed.
    assert (plan.extra_macs, plan.layer_extra_macs, plan.layer_cycles) == (180, [180, 0], [6 * 6 * 9, 4 * 4 * 9])


def test_plan_tiled_refusals():
    ctx = _ctx(TWO, Engine(1, 1), 10**6)
    assert sch.plan_tiled(ctx, 0, 2, max_layers=1) is None
    # A branch (two layers reading one tensor) is not a chain.
    branch = [conv("a", 2, 2, 4, k=3, p=1), conv("b", 2, 3, 4), conv("c", 2, 3, 4)]
    assert sch.plan_tiled(_ctx(branch, Engine(1, 1), 10**6), 0, 3) is None
    # A linear layer ends a chain; alone it is a group of one.
    fc = [conv("a", 2, 2, 2), Layer("fc", "linear", 1, 8, 1, 1, 3)]
    assert sch.plan_tiled(_ctx(fc, Engine(1, 1), 10**6), 0, 2) is None
    # Nothing fits: None.
    assert sch.plan_tiled(_ctx(TWO, Engine(1, 1), 20), 0, 2) is None


def test_choose_groups_by_hand():
    # Layer by layer each conv moves 82 words with 2 x 4 tiles (2 tiles of input 24, weights 9,
    # output 8): 164 bytes each.  Fused and tiled, the whole map fits in 164 bytes: 100 bytes in all.
    ctx = _ctx(TWO, Engine(1, 1), 164)
    singles = sch.choose_groups(ctx, "layer")
    assert [(p.start, p.stop, p.mode, p.dram_bytes, p.detail) for p in singles] == [
        (0, 1, "layer", 164, "Tr=2 Tc=4"), (1, 2, "layer", 164, "Tr=2 Tc=4")]
    fused = sch.choose_groups(ctx, "tiled")
    assert [(p.start, p.stop, p.mode, p.dram_bytes) for p in fused] == [(0, 2, "tiled", 100)]
    assert sch.choose_groups(ctx, "tiled", "intermediate") == fused
    # With 20 bytes nothing fuses: layer-by-layer plans (marked as not fitting) are what is left.
    tight = sch.choose_groups(_ctx(TWO, Engine(1, 1), 20), "tiled")
    assert [(p.mode, p.fits) for p in tight] == [("layer", False), ("layer", False)]
    est = estimate(TWO, device=Device("b", dsp=10, bram_bytes=164, dram_gbps=1.0, freq_mhz=100.0),
                   engine=Engine(1, 1), schedule="tiled-fused")
    assert est.total_dram_bytes == 100 and len(est.groups) == 1 and est.groups[0]["layers"] == "t0 .. t1"
    # Block-fused on a blocked pair: one group, nothing intermediate through DRAM.
    layers = [_blocked("a", 2, 4), _blocked("b", 4, 2)]
    block = sch.choose_groups(_ctx(layers, Engine(4, 2), 2 * 272), "block")
    assert [(p.start, p.stop, p.mode) for p in block] == [(0, 2, "block")]
    assert sch.has_block_convs(layers) and not sch.has_block_convs(TWO)


def test_boundary_traffic_of_a_group_with_an_outside_reader():
    # stem -> a -> b, and c reads the stem again (a branch): fusing [stem, a] must write the stem's
    # output for c (c's input, 4 x 8 x 8 = 256 words) and a's output for b (5 x 8 x 8 = 320).  Words.
    layers = [conv("stem", 2, 4, 8), conv("a", 4, 5, 8), conv("b", 5, 2, 8), conv("c", 4, 3, 8)]
    ctx = _ctx(layers, Engine(1, 1), 10**6)
    assert [e.source for e in ctx.graph.inputs] == [NETWORK_INPUT, 0, 1, 0]
    t = sch._boundary_traffic(ctx, 0, 2)
    assert t == {"input": 2 * 64, "weights": 0, "output": 0, "intermediate": 256 + 320}
    # [b, c]: both read from outside (a's and the stem's outputs).  Nobody reads b's output and it is
    # not last, so the graph folds it into the next layer's (c's) output: only c's 3 x 8 x 8 leaves.
    assert ctx.graph.merges == ((2, 3),)
    t = sch._boundary_traffic(ctx, 2, 4)
    assert t == {"input": 0, "weights": 0, "output": 3 * 64, "intermediate": 320 + 256}
    # [a, b]: a's output stays inside; b's is merged into c, outside the group: written as intermediate.
    t = sch._boundary_traffic(ctx, 1, 3)
    assert t == {"input": 0, "weights": 0, "output": 0, "intermediate": 256 + 2 * 64}


def test_plan_tiled_through_pooling_on_a_non_square_map():
    # p0: 3x3 padding 1 on 8 x 6, then 2x2 pooling to 4 x 3, then p1: 3x3 padding 1.  Engine(1, 1).
    p0, p1 = conv("p0", 1, 1, 8, 6, k=3, p=1), conv("p1", 1, 1, 4, 3, k=3, p=1)
    # Tile 2 (347 bytes; the whole map needs 348 with its weights): p1's output tiles rows [0,2) [2,4),
    # cols [0,2) [2,3) need p1 inputs rows [0,3) [1,4), cols [0,3) [1,3); pooled back x2 (clipped to
    # p0's 8 x 6): rows [0,6) [2,8), cols [0,6) [2,6); p0 then reads rows [0,7) [1,8), cols [0,6) [1,6).
    # p0 computes (6 + 6) x (6 + 4) = 120 outputs for its 48: (120 - 48) * 9 = 648 MACs recomputed.
    # Peak: p0 42 + 36 (its largest in and out tiles), p1 9 + 4; plus the DRAM ends 42 + 4 = 124 words.
    # Input read: (7 + 7) x (6 + 5) = 154 words; output 12; weights 18: 184 words.
    plan = sch.plan_tiled(_ctx([p0, p1], Engine(1, 1), 347), 0, 2)
    assert (plan.units, plan.detail, plan.buffer_bytes) == (4, "tile 2x2; weights on chip", 2 * (124 + 18))
    assert plan.traffic == {"input": 2 * 154, "weights": 36, "output": 24, "intermediate": 0}
    assert (plan.layer_cycles, plan.layer_extra_macs, plan.extra_macs) == ([12 * 10 * 9, 4 * 3 * 9], [648, 0], 648)
    assert type(plan.extra_macs) is int
    # 348 bytes: the whole map in one tile (peak 48 + 48 + 48 + 12 = 156 words, + 18): no recompute.
    whole = sch.plan_tiled(_ctx([p0, p1], Engine(1, 1), 348), 0, 2)
    assert (whole.units, whole.extra_macs, whole.dram_bytes) == (1, 0, 2 * (48 + 18 + 12))


def test_plan_tiled_ties_keep_the_largest_tile_and_tiny_buffers_take_one_pixel():
    # A 1x1 conv has no halo: every tiling moves the same words, so the first tried (largest) stays.
    ctx = _ctx([conv("pw", 2, 2, 4)], Engine(1, 1), 10**6)
    assert sch.plan_tiled(ctx, 0, 1).units == 1
    # TWO with 124 bytes: 2 x 2 tiles need 126 (45 + 18 words), 1-pixel tiles 120 (42 + 18): 16 tiles.
    tiny = sch.plan_tiled(_ctx(TWO, Engine(1, 1), 124), 0, 2)
    assert (tiny.units, tiny.detail) == (16, "tile 1x1; weights on chip")


def test_plan_tiled_streams_and_pins_weights_inside_a_longer_network():
    # pre (1x1) -> a, b (3x3 padding 1, 2 -> 2, 36 weights each) -> post (1x1) on 4 x 4; group [a, b];
    # 144 words of BRAM.  Whole-map tiles: peak 2*16 + 2*16 + 32 + 32 = 128 words, and 128 + 18 streamed
    # = 146 > 144.  2 x 2 tiles (4 of them): peak 2*16 + 2*9 + 2*16 + 2*4 = 90; 90 + 72 > 144, so the
    # weights stream (90 + 18 = 108) and a, run 4 times, is pinned (108 + 36 = 144); b is read 4 times.
    layers = [conv("pre", 2, 2, 4), conv("a", 2, 2, 4, k=3, p=1), conv("b", 2, 2, 4, k=3, p=1),
              conv("post", 2, 2, 4)]
    plan = sch.plan_tiled(_ctx(layers, Engine(1, 1), 288), 1, 3)
    assert (plan.units, plan.detail, plan.buffer_bytes) == (4, "tile 2x2; weights streamed, 1 of 2 layers pinned",
                                                            288)
    # Reads pre's output tile by tile: a's input rows [0,4) twice and cols [0,4) twice: 2 * 8 * 8 words;
    # writes b's output for post (2 * 16); weights 36 + 4 * 36.
    assert plan.traffic == {"input": 0, "weights": 2 * 180, "output": 0, "intermediate": 2 * (128 + 32)}


def test_plan_tiled_group_bounds():
    # Refusals depend on the group's own length and its own edges.
    eleven = [conv(f"c{i}", 2, 2, 2) for i in range(11)]
    ctx = _ctx(eleven, Engine(1, 1), 10**6)
    assert sch.plan_tiled(ctx, 0, 11) is None  # more than 10 layers by default
    assert sch.plan_tiled(ctx, 0, 10) is not None and sch.plan_tiled(ctx, 1, 11) is not None
    assert sch.plan_tiled(ctx, 0, 2, max_layers=2) is not None
    assert sch.plan_tiled(ctx, 5, 6, max_layers=1) is not None
    # A branch before the group does not matter: [c, d] is a chain although c reads a, not b.
    branch = [conv("a", 2, 2, 4), conv("b", 2, 3, 4), conv("c", 2, 5, 4), conv("d", 5, 1, 4), conv("e", 3, 1, 4)]
    ctx = _ctx(branch, Engine(1, 1), 10**6)
    assert [e.source for e in ctx.graph.inputs] == [NETWORK_INPUT, 0, 0, 2, 1]
    assert sch.plan_tiled(ctx, 2, 4) is not None
    assert sch.plan_tiled(ctx, 0, 3) is None  # c does not read b
    # A linear layer that reads a 1 x 1 map without flattening still ends the chain.
    flat = [conv("a", 2, 4, 1), Layer("fc", "linear", 1, 4, 1, 1, 3), conv("after", 3, 2, 1)]
    ctx = _ctx(flat, Engine(1, 1), 10**6)
    assert not ctx.graph.inputs[1].flatten
    assert sch.plan_tiled(ctx, 0, 2) is None
    assert sch.plan_tiled(ctx, 1, 3) is None  # a group may not start with a linear layer and go on
    assert sch.plan_tiled(ctx, 1, 2) is None  # nor hold one alone: it has no map to tile
    # A residual with one end in the group is fine; with both ends inside it is not.
    res = [conv("x1", 4, 8, 8, k=3, s=2, p=1), conv("x2", 8, 8, 4, k=3, p=1), conv("ds", 4, 8, 8, k=1, s=2),
           conv("n", 8, 2, 4)]
    ctx = _ctx(res, Engine(1, 1), 10**6)
    assert ctx.graph.merges == ((1, 2),)
    assert sch.plan_tiled(ctx, 0, 2) is not None and sch.plan_tiled(ctx, 2, 4) is not None


@pytest.mark.parametrize(
    ("layers", "peak_words", "traffic_words"),
    [
        # The streamed input dominates: a 8 -> 1, b 1 -> 1.  At a: its input block double-buffered
        # 2 * 8*4*4 = 256 + its output block 16; at b: 16 + b's block 16 + drain 16 = 48.
        ([_blocked("a", 8, 1), _blocked("b", 1, 1)], 256 + 16, (8 * 64, 64)),
        # The output dominates: b 1 -> 8 without padding, so its 4 x 4 blocks give 2 x 2 outputs.
        # At a: 2 * 16 + 16 = 48; at b: a's block 16 + b's 8*2*2 = 32 + drain 32 = 80.
        ([_blocked("a", 1, 1), conv("b", 1, 8, 8, k=3, block_rows=BLOCKS, block_cols=BLOCKS)], 16 + 32 + 32,
         (64, 8 * 4 * 4)),
        # z (on 4 x 4 after pooling, one block) is coarser than y: y's blocks are assembled into z's
        # input (16 words), which must stay while the run of finer layers before it (x and y) lasts.
        # At x: 256 + x's block 16 + that 16 = 288; at y: 32; at z: 16 + 16 + 16 = 48.
        ([_blocked("x", 8, 1), _blocked("y", 1, 1), conv("z", 1, 1, 4, k=3, p=1)], 256 + 16 + 16, (8 * 64, 16)),
        # z unblocked on the same 8 x 8 (no pooling): its whole 8 x 8 input is assembled from x's four
        # blocks: 64 words, live at x and z.  At x: 2 * 16 + 64; at z: 64 + 64 + drain 64.
        ([_blocked("x", 1, 1), conv("z", 1, 1, 8, k=3, p=1)], 3 * 64, (64, 64)),
        # s has stride 2: its 4 x 4 input blocks give 2 x 2 output blocks, which t (blocks of 2 on 4 x 4)
        # reads as they are.  At s: 2 * 16 + 4; at t: 4 + 4 + 4.
        ([conv("s", 1, 1, 8, k=3, s=2, p=1, block_rows=BLOCKS, block_cols=BLOCKS),
          conv("t", 1, 1, 4, k=3, p=1, block_rows=((0, 2), (2, 4)), block_cols=((0, 2), (2, 4)))], 32 + 4, (64, 16)),
        # Linear layers stream one value per input feature: 2 * 32 in, then 16 and 4 (+ 4 drained).
        ([Layer("fc1", "linear", 1, 32, 1, 1, 16), Layer("fc2", "linear", 1, 16, 1, 1, 4)], 64 + 16, (32, 4)),
    ],
    ids=["input-bound", "output-bound", "coarser-after-a-run", "coarser-same-size", "strided-producer",
         "linear"],
)
def test_plan_block_buffers_by_hand(layers, peak_words, traffic_words):
    ctx = _ctx(layers, Engine(1, 1), 10**6)
    plan = sch.plan_block(ctx, 0, len(layers))
    weights = sum(layer.params for layer in layers)
    assert plan.buffer_bytes == 2 * (peak_words + weights)
    assert plan.traffic == {"input": 2 * traffic_words[0], "weights": 2 * weights, "output": 2 * traffic_words[1],
                            "intermediate": 0}


@pytest.mark.parametrize("w", [1, 6])
def test_plan_block_with_a_residual(w):
    # a (2 -> 4) feeds b (4 -> w, 3x3) and c (4 -> w, 1x1, the shortcut); nobody reads b, so the graph
    # adds it into c (same shape); d (w -> 2) reads c.  All 8 x 8 in blocks of 4 (16-pixel blocks).
    layers = [_blocked("a", 2, 4), _blocked("b", 4, w), conv("c", 4, w, 8, block_rows=BLOCKS, block_cols=BLOCKS),
              _blocked("d", w, 2)]
    ctx = _ctx(layers, Engine(1, 1), 10**6)
    assert [e.source for e in ctx.graph.inputs] == [NETWORK_INPUT, 0, 0, 2] and ctx.graph.merges == ((1, 2),)
    weights = [72, 36 * w, 4 * w, 18 * w]
    # All four: a's block (64) lives through c; b's block (16w) is kept until c adds it.
    # At a: input 64 + a 64; at b: 64 + 16w; at c: 64 + 16w + 16w; at d: 16w + d 32 + drain 32.
    whole = sch.plan_block(ctx, 0, 4)
    peak = max(128, 64 + 16 * w, 64 + 32 * w, 16 * w + 64)
    assert whole.buffer_bytes == 2 * (peak + sum(weights))
    assert whole.traffic == {"input": 2 * 128, "weights": 2 * sum(weights), "output": 2 * 128, "intermediate": 0}
    # [a, b] alone: a's output is also read by c outside (drained: 64 more), b's is added into c outside
    # (drained: 16w more).  At a: 64 + 64 + 64; at b: 64 + 16w + 16w.  DRAM: c's input (4 x 64) and b's
    # output (w x 64) are written out.
    pair = sch.plan_block(ctx, 0, 2)
    assert pair.buffer_bytes == 2 * (max(192, 64 + 32 * w) + 72 + 36 * w)
    assert pair.traffic == {"input": 2 * 128, "weights": 2 * (72 + 36 * w), "output": 0,
                            "intermediate": 2 * (256 + 64 * w)}
    # [c, d]: b's output comes in from DRAM to be added into c, double-buffered (2 x 16w).
    tail = sch.plan_block(ctx, 2, 4)
    assert tail.traffic["intermediate"] == 2 * (256 + 64 * w)
    # At c: its input block 2 * 64 + the residual 2 * 16w + c 16w; at d: 16w + 32 + 32.
    assert tail.buffer_bytes == 2 * (max(128 + 48 * w, 16 * w + 64) + 22 * w)


def test_plan_block_refuses_grids_coarser_along_one_axis_and_finer_along_the_other():
    # a: 2 row blocks, 1 column block; b: 1 row block, 2 column blocks.  b waits for both of a's row
    # blocks (coarser along H) while each a block feeds both of b's column blocks (finer along W):
    # neither order of the blocks works without holding the whole map, so the group is refused.
    a = conv("a", 2, 2, 8, k=3, p=1, block_rows=BLOCKS)
    b = conv("b", 2, 2, 8, k=3, p=1, block_cols=BLOCKS)
    assert sch.plan_block(_ctx([a, b], Engine(1, 1), 10**6), 0, 2) is None
    # The same grids on both layers are fine; so is coarser along one axis and the same along the other.
    assert sch.plan_block(_ctx([a, conv("c", 2, 2, 8, k=3, p=1, block_rows=BLOCKS)], Engine(1, 1), 10**6), 0, 2)
    assert sch.plan_block(_ctx([a, conv("d", 2, 2, 8, k=3, p=1)], Engine(1, 1), 10**6), 0, 2)
    # The detail names the first and the last layer's block counts.
    xyz = [_blocked("x", 8, 1), _blocked("y", 1, 1), conv("z", 1, 1, 4, k=3, p=1)]
    assert sch.plan_block(_ctx(xyz, Engine(1, 1), 10**6), 0, 3).detail == "blocks 4->1; weights on chip"


# ---------------------------------------------------------------------------- fusion search: the finer points
# Cases the mutation run (CONTRIBUTING.md, "Mutation testing") found unpinned: ties in the search,
# tensors read twice at a group's edge, and liveness and buffer keys in block groups with residuals.


def test_engine_exploration_tie_goes_to_fewer_macs_not_to_the_squarer_array():
    # One 1x1 conv 4 -> 1 on a 1 x 1 map: cycles = ceil(1/Tm) * ceil(4/Tn).  3 MACs: Tn=1 -> 4 cycles,
    # Tn=2 -> 2, Tn=3 -> ceil(4/3) = 2, each with Tm=1 (M = 1).  Tn=2 and Tn=3 tie at 2 cycles; the
    # smaller array (2 MACs, not 3) wins.  (Ordering by Tm/Tn instead would pick Tn=3.)
    assert eng.explore_engine([conv("e", 4, 1, 1)], dsp_budget=3, bits=16) == Engine(1, 2)


def test_collect_sums_the_recomputed_macs_of_every_group():
    # Two tiled groups that recompute 5 and 7 MACs: the estimate reports 12, and each layer its own.
    layers = [conv("a", 1, 1, 4, k=3, p=1), conv("b", 1, 1, 4, k=3, p=1)]
    traffic = {"input": 2, "weights": 2, "output": 2, "intermediate": 2}
    plans = [sch.GroupPlan(0, 1, "tiled", dict(traffic), 8, 100, extra_macs=5, layer_cycles=[100],
                            layer_extra_macs=[5]),
             sch.GroupPlan(1, 2, "tiled", dict(traffic), 8, 100, extra_macs=7, layer_cycles=[100],
                            layer_extra_macs=[7])]
    est = _collect(layers, plans, TOY, 16, "tiled-fused", Engine(1, 1), 200.0, 1)
    assert est.extra_macs == 12
    assert [row["extra_MMAC"] for row in est.layers] == [5e-6, 7e-6]
    assert est.dram_bytes == {"input": 4, "weights": 4, "output": 4, "intermediate": 4}


def test_boundary_reads_an_outside_tensor_once_at_its_largest():
    # a (1 -> 2, 1x1) reads the 1 x 8 x 8 network input; b (1 -> 3, 1x1 on 4 x 4) reads it too, after 2x2
    # pooling (a's 2 channels don't match b's 1).  Fused, the input is read once, whole: 64 words, not b's
    # pooled 16 (the later, smaller read must not replace the earlier, larger one).  Nobody reads a, so it
    # is folded into b; b's 3 x 4 x 4 = 48 words are the output.
    ctx = _ctx([conv("a", 1, 2, 8), conv("b", 1, 3, 4)], Engine(1, 1), 10**6)
    assert ctx.graph.inputs[1] == Edge(NETWORK_INPUT, 1, 2, 2) and ctx.graph.merges == ((0, 1),)
    assert sch._boundary_traffic(ctx, 0, 2) == {"input": 64, "weights": 0, "output": 48, "intermediate": 0}


def test_boundary_reads_a_concatenated_tensor_once_at_its_largest():
    # On 4 x 4, 1x1 convs: p (1 -> 2), q (1 -> 3), r (1 -> 4) all read the 1-channel input; X reads 5
    # channels, the concatenation [p, q] (2 + 3), and Y 7, the concatenation [q, r] (3 + 4).  A read of a
    # concatenation is counted under its second part, and its first part is joined to the second:
    # inputs X <- q, Y <- r; merges (p, q), (q, r); nobody reads X, so it is added into Y (same shape).
    layers = [conv("p", 1, 2, 4), conv("q", 1, 3, 4), conv("r", 1, 4, 4), conv("X", 5, 1, 4), conv("Y", 7, 1, 4)]
    ctx = _ctx(layers, Engine(1, 1), 10**6)
    assert [e.source for e in ctx.graph.inputs] == [NETWORK_INPUT, NETWORK_INPUT, NETWORK_INPUT, 1, 2]
    assert ctx.graph.merges == ((0, 1), (1, 2), (3, 4))
    # Group [r, X]: r reads the input (16 words).  X reads [p, q] under q: 5 x 16 = 80 words; q is needed
    # again to join r's output, and its 3 x 16 = 48 words are part of that read: q counts once, 80 (not 48).
    # Written: r's output for Y, whose input is 7 x 16 = 112 words, and X's 16, added into Y outside.
    assert sch._boundary_traffic(ctx, 2, 4) == {"input": 16, "weights": 0, "output": 0,
                                                "intermediate": 80 + 112 + 16}


def test_choose_groups_intermediate_objective_keeps_maps_on_chip_at_a_traffic_cost():
    # a, b: 1x1 convs 4 -> 4 -> 4 on 2 x 2 in 1-pixel blocks (4 blocks); Engine(1, 1); 32 words of BRAM.
    # Fused [a, b]: live words at a: its input block streamed in 2 * 4 + a's block 4 = 12; at b: 4 + b's 4
    # + drain 4 = 12.  12 + 32 weights > 32: the weights stream (2 words) and a is pinned (14 + 16 = 30),
    # b (46) is not: weights 16 + 4 * 16 = 80; traffic 16 in + 16 out + 80 = 112 words, intermediate 0.
    # Split, each block-planned alone: [a] 2 * 4 + 4 + drain 4 = 16 live + 16 weights = 32 fits; it moves
    # 16 in + 16 out (intermediate) + 16 weights = 48; [b] the same 48 (its input comes back in).  96 words.
    # Layer by layer each conv re-reads its input once per output channel with Tm = 1: 64 + 16 + 16 = 96
    # words, worse than 48.  So: least traffic splits (96 < 112); least intermediate first fuses (0 < 32).
    layers = [conv(n, 4, 4, 2, block_rows=((0, 1), (1, 2)), block_cols=((0, 1), (1, 2))) for n in ("a", "b")]
    ctx = _ctx(layers, Engine(1, 1), 2 * 32)
    split = sch.choose_groups(ctx, "block")
    assert [(p.start, p.stop, p.mode, p.dram_bytes, p.traffic["intermediate"]) for p in split] == [
        (0, 1, "block", 2 * 48, 2 * 16), (1, 2, "block", 2 * 48, 2 * 16)]
    fused = sch.choose_groups(ctx, "block", objective="intermediate")
    assert [(p.start, p.stop, p.mode, p.dram_bytes, p.traffic["intermediate"]) for p in fused] == [
        (0, 2, "block", 2 * 112, 0)]
    assert fused[0].detail == "blocks 4; weights streamed, 1 of 2 layers pinned"


def test_choose_groups_breaks_a_traffic_tie_by_fewer_cycles():
    # t0, t1: 1x1 convs 1 -> 1; t2: 3x3 padding 1, 1 -> 1; all on 4 x 4; Engine(1, 1); 41 words of BRAM.
    # Whole-map tiles need 16 + 16 live + 16 + 16 at the DRAM ends > 41 words in any group; 2 x 2 tiles fit:
    # * [t0, t1] tiled: 1x1 convs have no halo: 16 in, 16 out, 2 weights = 34 words; 16 + 16 cycles.
    # * [t2] alone: its 2 x 2 tiles read rows [0,3) [1,4) and the same columns: 6 x 6 = 36 in, 16 out,
    #   9 weights = 61 words; 16 * 9 = 144 cycles.  (Peak 9 + 4 + 9 + 4 + 9 = 35 words.)
    # * [t0] alone: 16 + 16 + 1 = 33 words, 16 cycles.
    # * [t1, t2] tiled: the same 6 x 6 halo read (of t0's output), 16 out, 10 weights = 62 words (peak
    #   t1 9 + 9, + 9 + 4 at the ends, + 10 = 41); t1 computes 6 x 6 = 36 outputs for its 16: 36 + 144 cycles.
    # [t0, t1] + [t2] and [t0] + [t1, t2] both move 95 words; the first takes 176 cycles, the second 196.
    # (All three fused only fit with 1-pixel tiles: 100 in + 16 + 11 = 127 words.  On the tiled engine
    # alone t0 and t1 move 34 words each (2 x 4 tiles, weights per tile); t2 fits only 1 x 1 tiles: 16 *
    # (9 + 9) + 16 = 304 words.)
    layers = [conv("t0", 1, 1, 4), conv("t1", 1, 1, 4), conv("t2", 1, 1, 4, k=3, p=1)]
    ctx = _ctx(layers, Engine(1, 1), 2 * 41)
    other = [sch.plan_tiled(ctx, 0, 1), sch.plan_tiled(ctx, 1, 3)]
    assert [(p.dram_bytes, p.cycles) for p in other] == [(2 * 33, 16), (2 * 62, 36 + 144)]
    plans = sch.choose_groups(ctx, "tiled")
    assert [(p.start, p.stop, p.mode, p.dram_bytes, p.cycles) for p in plans] == [
        (0, 2, "tiled", 2 * 34, 32), (2, 3, "tiled", 2 * 61, 144)]


def test_choose_groups_exact_tie_keeps_the_layer_plan():
    # A 1x1 conv 2 -> 2 on 4 x 4 with Engine(2, 2) and room for everything: the tiled engine moves the
    # input (32), the weights (4) and the output (32) once, as does a one-layer fused tile: 68 words and
    # 16 cycles both ways.  On an exact tie the first option found, the plain layer plan, stays.
    ctx = _ctx([conv("pw", 2, 2, 4)], Engine(2, 2), 10**6)
    assert sch.plan_tiled(ctx, 0, 1).dram_bytes == sch.plan_layer(ctx, 0).dram_bytes == 2 * 68
    [plan] = sch.choose_groups(ctx, "tiled")
    assert (plan.mode, plan.dram_bytes, plan.cycles) == ("layer", 2 * 68, 16)


def test_plan_block_coarser_input_is_live_only_through_the_finer_run():
    # u (unblocked 1 -> 1, 3x3 on 8 x 8), y (blocked 1 -> 1), x (blocked 1 -> 4), z (unblocked 4 -> 1 on
    # 4 x 4 after 2x2 pooling), w (1x1 1 -> 4 on 4 x 4).  Block counts 1, 4, 4, 1, 1.  z is coarser than x:
    # x's blocks are assembled into z's 4 x 4 x 4 input (64 words), live while the run of finer layers
    # before z (y and x) runs and at z: not at u, before the run, nor at w, after z.
    # Live words: u: its input 2 * 64 + its whole output 64 (read by y) = 192; y: 64 + y's block 16 + z's
    # input 64 = 144; x: 16 + 64 = 80; z: 64 + its output 16 = 80; w: 16 + w's 4 x 16 = 64 + drain 64 = 144.
    # Weights 9 + 9 + 36 + 36 + 4 = 94 fit: 192 + 94 words.  (Held at u too: 256; at w too: 208.)
    layers = [conv("u", 1, 1, 8, k=3, p=1), _blocked("y", 1, 1), _blocked("x", 1, 4), conv("z", 4, 1, 4, k=3, p=1),
              conv("w", 1, 4, 4)]
    ctx = _ctx(layers, Engine(1, 1), 10**6)
    assert [e.source for e in ctx.graph.inputs] == [NETWORK_INPUT, 0, 1, 2, 3] and ctx.graph.merges == ()
    plan = sch.plan_block(ctx, 0, 5)
    assert plan.buffer_bytes == 2 * (192 + 94)
    assert plan.traffic == {"input": 2 * 64, "weights": 2 * 94, "output": 2 * 64, "intermediate": 0}


def test_plan_block_two_streamed_inputs_are_two_buffers():
    # x1 (unblocked 1 -> 2, 3x3 on 8 x 8) -> x2 (blocked 2 -> 6); ds (blocked 1x1 1 -> 6) reads the network
    # input again (x1's 2 channels don't match), and x2, read by nobody, is added into ds (same shape).
    # Each streamed input has its own double buffer, live only at its reader: x1's 2 * 64 and ds's 2 * 16.
    # Live words: x1: 128 + its whole output 128 = 256; x2: 128 + its block 6 * 16 = 96 -> 224; ds: 32 +
    # its block 96 + drain 96 + x2's block kept for the add 96 = 320 (not 416 with x1's 128 in place of 32).
    # Weights 18 + 108 + 6 = 132 fit.
    layers = [conv("x1", 1, 2, 8, k=3, p=1), _blocked("x2", 2, 6), conv("ds", 1, 6, 8, block_rows=BLOCKS,
                                                                         block_cols=BLOCKS)]
    ctx = _ctx(layers, Engine(1, 1), 10**6)
    assert [e.source for e in ctx.graph.inputs] == [NETWORK_INPUT, 0, NETWORK_INPUT]
    assert ctx.graph.merges == ((1, 2),)
    plan = sch.plan_block(ctx, 0, 3)
    assert plan.buffer_bytes == 2 * (320 + 132)
    # The input is read once (64 words, though two layers read it); ds's 6 x 64 is the output.
    assert plan.traffic == {"input": 2 * 64, "weights": 2 * 132, "output": 2 * 384, "intermediate": 0}


# A residual block, all in blocks of 4 on 8 x 8: x1 (1 -> 5) -> x2 (5 -> 2); the shortcut ds (1x1, 1 -> 2) reads
# the input; x2's output is added into ds's (same shape); n (2 -> 2) reads ds.
RESIDUAL = [_blocked("x1", 1, 5), _blocked("x2", 5, 2), conv("ds", 1, 2, 8, block_rows=BLOCKS, block_cols=BLOCKS),
            _blocked("n", 2, 2)]


def test_plan_block_residual_held_from_its_producer_to_the_add():
    ctx = _ctx(RESIDUAL, Engine(1, 1), 10**6)
    assert [e.source for e in ctx.graph.inputs] == [NETWORK_INPUT, 0, NETWORK_INPUT, 2]
    assert ctx.graph.merges == ((1, 2),)
    # Live words: x1: input 2 * 16 + its block 80 = 112; x2: 80 + x2's block 32 = 112 (counted once,
    # though it is also the residual); ds: 32 + ds's 32 + the residual 32 = 96; n: ds's 32 + n's 32 + drain
    # 32 = 96 (the residual is gone once ds has added it).  Weights 45 + 90 + 2 + 36 = 173 fit.
    whole = sch.plan_block(ctx, 0, 4)
    assert whole.buffer_bytes == 2 * (112 + 173)
    # [x1, x2] alone: x2's output leaves (added into ds outside) and has a drain buffer; x1's does not, as
    # x2 reads it inside.  x1: 32 + 80 = 112; x2: 80 + 32 + 32 = 144.  Weights 45 + 90.
    head = sch.plan_block(ctx, 0, 2)
    assert head.buffer_bytes == 2 * (144 + 135)
    assert head.traffic == {"input": 2 * 64, "weights": 2 * 135, "output": 0, "intermediate": 2 * 128}


def test_plan_block_residual_read_back_at_the_add_by_output_block():
    # The residual block with stride 2, as in a ResNet downsample: x1 (1 -> 2, 3x3 stride 2, blocks of 4
    # on 8 x 8 -> 2 x 2 output blocks on 4 x 4), x2 (2 -> 2 on 4 x 4, blocks of 2), ds (1x1 stride 2, 1 ->
    # 2, blocks of 4 -> 2 x 2), n (2 -> 2 on 4 x 4, blocks of 2).  The group [ds, n]: x2's output comes back
    # from DRAM to be added to ds's, block by block in ds's *output* blocks: 2 * 2 x 2 x 2 = 16 words.
    halves = ((0, 2), (2, 4))
    layers = [conv("x1", 1, 2, 8, k=3, s=2, p=1, block_rows=BLOCKS, block_cols=BLOCKS),
              conv("x2", 2, 2, 4, k=3, p=1, block_rows=halves, block_cols=halves),
              conv("ds", 1, 2, 8, s=2, block_rows=BLOCKS, block_cols=BLOCKS),
              conv("n", 2, 2, 4, k=3, p=1, block_rows=halves, block_cols=halves)]
    ctx = _ctx(layers, Engine(1, 1), 10**6)
    assert [e.source for e in ctx.graph.inputs] == [NETWORK_INPUT, 0, NETWORK_INPUT, 2]
    assert ctx.graph.merges == ((1, 2),)
    # Live words: ds: its 4 x 4 input block 2 * 16 + its output block 2 * 4 = 8 + the residual 16 = 56;
    # n: 8 + 8 + drain 8 = 24.  Weights 2 + 36.
    tail = sch.plan_block(ctx, 2, 4)
    assert tail.buffer_bytes == 2 * (56 + 38)
    # Reads the input (64) and x2's 2 x 4 x 4 = 32; writes n's 32.
    assert tail.traffic == {"input": 2 * 64, "weights": 2 * 38, "output": 2 * 32, "intermediate": 2 * 32}


def test_plan_block_two_residuals_from_outside_are_two_buffers():
    # Input 3 x 8 x 8, all in blocks of 4: t1 (3 -> 1), t2 (3 -> 2), k1 (3 -> 1) read the input; k2 (1 -> 2)
    # reads k1.  Nobody reads t1 or t2: each is added into the next tensor of its shape, t1 into k1, t2 into
    # k2.  The group [k1, k2] reads both back, each double-buffered at its own add: 2 * 16 at k1, 2 * 32 at k2.
    # Live words: k1: input 2 * 3 * 16 = 96 + k1's block 16 + t1's 32 = 144; k2: 16 + k2's 32 + drain 32 +
    # t2's 64 = 144.  (One shared buffer of 64 would make k1 176.)  Weights 27 + 18.
    layers = [_blocked("t1", 3, 1), _blocked("t2", 3, 2), _blocked("k1", 3, 1), _blocked("k2", 1, 2)]
    ctx = _ctx(layers, Engine(1, 1), 10**6)
    assert [e.source for e in ctx.graph.inputs] == [NETWORK_INPUT, NETWORK_INPUT, NETWORK_INPUT, 2]
    assert ctx.graph.merges == ((0, 2), (1, 3))
    plan = sch.plan_block(ctx, 2, 4)
    assert plan.buffer_bytes == 2 * (144 + 45)
    # Reads the input (3 x 64), t1 (64) and t2 (128); writes k2 (128).
    assert plan.traffic == {"input": 2 * 192, "weights": 2 * 45, "output": 2 * 128, "intermediate": 2 * 192}


def test_plan_block_two_outputs_leaving_are_two_buffers():
    # a (1 -> 4) -> b (4 -> 3), and c (4 -> 3) reads a again; nobody reads b, so it is added into c.  The
    # group [a, b] writes both a's and b's outputs, each through its own drain buffer: 64 at a, 48 at b.
    # Live words: a: input 2 * 16 + a's block 64 + drain 64 = 160; b: a's 64 + b's 48 + drain 48 = 160.
    # (One shared drain of 64 would make b 176.)  Weights 36 + 108.
    layers = [_blocked("a", 1, 4), _blocked("b", 4, 3), _blocked("c", 4, 3)]
    ctx = _ctx(layers, Engine(1, 1), 10**6)
    assert [e.source for e in ctx.graph.inputs] == [NETWORK_INPUT, 0, 0] and ctx.graph.merges == ((1, 2),)
    plan = sch.plan_block(ctx, 0, 2)
    assert plan.buffer_bytes == 2 * (160 + 144)
    # Writes c's input (a's 4 x 64) and b's 3 x 64.
    assert plan.traffic == {"input": 2 * 64, "weights": 2 * 144, "output": 0, "intermediate": 2 * (256 + 192)}


UNEVEN = ((0, 3), (3, 8))


@pytest.mark.parametrize(
    ("t_grid", "k_grid", "peak_words"),
    [
        # Both the same, blocks of 3 and 5 along both axes (largest block 25 pixels).  Live words: at t its
        # input 2 * 25 + its block 50 = 100; at k 50 + 50 + drain 50 + t's block kept for the add 50 = 200.
        ((UNEVEN, UNEVEN), (UNEVEN, UNEVEN), 200),
        # Both the same, blocks of 4 along H and 3 and 5 along W (20 pixels): k 4 * 40.
        ((BLOCKS, UNEVEN), (BLOCKS, UNEVEN), 160),
        # t's row blocks (3, 5) straddle k's (4, 4): refused.
        ((UNEVEN, BLOCKS), (BLOCKS, BLOCKS), None),
        # t's column blocks straddle k's: refused.
        ((BLOCKS, UNEVEN), (BLOCKS, BLOCKS), None),
    ],
    ids=["same-uneven", "same-rows4-cols-uneven", "rows-straddle", "cols-straddle"],
)
def test_plan_block_residual_grids_must_nest_row_with_row_and_column_with_column(t_grid, k_grid, peak_words):
    # t and k (1 -> 2, 3x3 padding 1, on 8 x 8) both read the input; t is added into k.  The add needs t's
    # blocks and k's to nest along H (rows with rows) and along W (columns with columns), without pooling.
    t = conv("t", 1, 2, 8, k=3, p=1, block_rows=t_grid[0], block_cols=t_grid[1])
    k = conv("k", 1, 2, 8, k=3, p=1, block_rows=k_grid[0], block_cols=k_grid[1])
    ctx = _ctx([t, k], Engine(1, 1), 10**6)
    assert ctx.graph.merges == ((0, 1),)
    plan = sch.plan_block(ctx, 0, 2)
    if peak_words is None:
        assert plan is None
    else:
        assert plan.buffer_bytes == 2 * (peak_words + 36)


def test_plan_block_drains_only_outputs_that_leave_the_group():
    # RESIDUAL's [x1, x2] inside a longer network: x2's output is added into ds outside the group, and
    # that add has nothing to do with x1, which x2 alone reads: x1 gets no drain buffer.  The peak is at x2
    # (144 words); a drain at x1 would make it 112 + 80 = 192.
    ctx = _ctx(RESIDUAL, Engine(1, 1), 10**6)
    assert sch.plan_block(ctx, 0, 2).buffer_bytes == 2 * (144 + 135)


def test_plan_block_pins_weights_in_a_group_inside_the_network():
    # p (1 -> 2), a (2 -> 4), b (4 -> 2), q (2 -> 1), all in blocks of 4 on 8 x 8; Engine(1, 1); the group
    # [a, b] with 271 words.  Live words: a: its input 2 * 32 + a's 64 = 128; b: 64 + 32 + drain 32 = 128.
    # 128 + 144 weights > 271: stream (18 words: 146), pin a (146 + 72 = 218), b re-read per block: the
    # group's own two layers, four blocks each, whatever lies before or after it.
    layers = [_blocked("p", 1, 2), _blocked("a", 2, 4), _blocked("b", 4, 2), _blocked("q", 2, 1)]
    plan = sch.plan_block(_ctx(layers, Engine(1, 1), 2 * 271), 1, 3)
    assert (plan.buffer_bytes, plan.detail) == (2 * 218, "blocks 4; weights streamed, 1 of 2 layers pinned")
    # Reads p's 2 x 64, writes b's 2 x 64 for q; weights 72 + 4 * 72.
    assert plan.traffic == {"input": 0, "weights": 2 * 360, "output": 0, "intermediate": 2 * 256}


# ---------------------------------------------------------------------------- mutation follow-ups


def test_estimate_accepts_a_clock_below_one_mhz_and_passes_the_objective_on():
    # freq_mhz only has to be > 0: 0.5 MHz is a valid clock; TOY_LAYER's 9216 cycles then take
    # 9216 / 0.5e6 = 18.432 ms, plus its one tile's 74368 bytes at 2 GB/s (37.184 us) before and after.
    slow = estimate([TOY_LAYER], device=TOY, engine=TOY_ENGINE, freq_mhz=0.5)
    assert slow.freq_mhz == 0.5 and slow.latency_s == pytest.approx(9216 / 0.5e6 + 37.184e-6, rel=1e-12)
    # The objective reaches the grouping: the two blocked convs of
    # test_choose_groups_intermediate_objective_... split under "traffic" (2 x 48 words, 32 of them
    # intermediate) and fuse under "intermediate" (112 words, none intermediate); 16-bit words.
    layers = [conv(n, 4, 4, 2, block_rows=((0, 1), (1, 2)), block_cols=((0, 1), (1, 2))) for n in ("a", "b")]
    tiny = Device("tiny", dsp=1, bram_bytes=2 * 32, dram_gbps=1.0, freq_mhz=1.0)
    kw = {"device": tiny, "engine": Engine(1, 1), "schedule": "block-fused"}
    split = estimate(layers, **kw)
    assert (len(split.groups), split.total_dram_bytes, split.dram_bytes["intermediate"]) == (2, 2 * 96, 2 * 32)
    fused = estimate(layers, objective="intermediate", **kw)
    assert (len(fused.groups), fused.total_dram_bytes, fused.dram_bytes["intermediate"]) == (1, 2 * 112, 0)


def test_estimate_block_fused_refusal_message_in_full():
    # The whole message, start to end, as the docstring's "Raises" promises it.
    with pytest.raises(ValueError) as info:
        estimate([TOY_LAYER], device=TOY, schedule="block-fused")
    assert str(info.value) == (
        "schedule='block-fused' needs a network with block convolutions (layers with block_rows/block_cols); "
        "this one has none: use schedule='layer' or 'tiled-fused', or a block variant of the model")


def test_collect_of_groups_that_do_no_work():
    # A group with no cycles and no DRAM traffic: latency 0, so fps and the CTCs (ops per byte of
    # nothing) are infinite, GOPS and the layer's utilisation are 0 (nothing ran), not errors.
    layers = [conv("z", 1, 1, 1)]
    plan = sch.GroupPlan(0, 1, "layer", sch.empty_traffic(), 0, 0, layer_cycles=[0], layer_extra_macs=[0])
    est = _collect(layers, [plan], TOY, 16, "layer", Engine(1, 1), 200.0, 1)
    assert est.latency_s == 0.0 and est.fps == float("inf") and est.gops == 0.0
    assert est.ctc == float("inf") and est.groups[0]["ctc"] == float("inf")
    assert est.layers[0]["util"] == 0.0


@pytest.mark.parametrize("second_fits", [True, False])
def test_collect_second_group_rows_tie_and_fit(second_fits):
    # 1 MHz and 1 GB/s.  a: 1x1 conv 1 -> 2 on 1 x 1 (2 MACs); b: 2 -> 3 (6 MACs).
    # Group 0 = [a]: 1000 cycles = 1 ms, no traffic, buffer exactly the 100-byte BRAM: that fits (<=).
    # Group 1 = [b]: 1000 cycles = 1 ms in 1000 steps and 1e6 intermediate bytes read = 1 ms: a tie is
    # compute-bound (memory-bound only when the transfer is slower).  Only the first step's read
    # (1 us) is exposed: 1.001 ms.  Its row: one layer "b", n = 1, 1.0 MB intermediate, CTC = its own
    # 2 * 6 ops / 1e6 bytes (a's MACs belong to group 0).
    # Whole: latency 2.001 ms, GOPS = 2 * 8 / 2.001 ms / 1e9; roof 2 * 2 * 3 * 1e6 / 1e9 = 0.012.
    # fits only if every group fits: a plan that says it does not, though its buffer is small, spoils it.
    layers = [conv("a", 1, 2, 1), conv("b", 2, 3, 1)]
    dev = Device("edge", dsp=6, bram_bytes=100, dram_gbps=1.0, freq_mhz=1.0)
    plans = [sch.GroupPlan(0, 1, "layer", sch.empty_traffic(), 100, 1000, layer_cycles=[1000],
                           layer_extra_macs=[0], phases=[Phase(1000, 1, (), 100)]),
             sch.GroupPlan(1, 2, "layer", {**sch.empty_traffic(), "intermediate": 10**6}, 50, 1000,
                           fits=second_fits, layer_cycles=[1000], layer_extra_macs=[0],
                           phases=[Phase(1000, 1000, (Transfer("intermediate", 10**6, 10**6),), 50)])]
    est = _collect(layers, plans, dev, 16, "layer", Engine(2, 3), 1.0, 6)
    assert est.fits is second_fits and est.buffer_bytes == 100
    row = est.groups[1]
    assert (row["layers"], row["n"], row["inter_MB"], row["bound"]) == ("b", 1, 1.0, "compute")
    assert row["ms"] == pytest.approx(1.001, rel=1e-12) and row["compute_ms"] == pytest.approx(1.0, rel=1e-12)
    assert row["ctc"] == pytest.approx(12 / 1e6, rel=1e-12, abs=0)
    assert est.latency_s == pytest.approx(2.001e-3, rel=1e-12) and est.fps == pytest.approx(1 / 2.001e-3, rel=1e-12)
    assert est.gops == pytest.approx(16 / 2.001e-3 / 1e9, rel=1e-12, abs=0)  # abs=0: 1e-12 would hide it
    assert est.compute_roof_gops == pytest.approx(0.012, rel=1e-12)


def test_graph_fuse_col_first_and_fuse_halves_at_the_start():
    # The halves rule looks at the layer before; layer 0 has none (not the list's last layer): a
    # column conv first and a row conv last read the input and the column conv's output.
    row = Layer("f.row", "fuse_row", 1, 4, 12, 12, 4, 1, 3, 1, 1, 0, 1, 1, 1, 4)
    col = Layer("f.col", "fuse_col", 1, 4, 12, 12, 4, 3, 1, 1, 1, 1, 0, 1, 1, 4)
    assert build_graph([col, row]).inputs == (Edge(NETWORK_INPUT, 0, 1, 1), Edge(0, 1, 1, 1))
    # Row then column as the first two layers: the column half copies the row half's edge exactly
    # (source, pooling, no flatten), with only that one edge before it.
    assert build_graph([row, col]).inputs == (Edge(NETWORK_INPUT, 0, 1, 1, False),
                                              Edge(NETWORK_INPUT, 1, 1, 1, False))


# ---------------------------------------------------------------------------- build_graph: rule by rule
# The 14 build_graph mutants the second mutation run left (CONTRIBUTING.md).  Each graph is worked out
# from the rules in hwmodel/fpga/graph.py's docstring: nearest single tensor first (channels equal, or a
# channel slice for a FuSe half; H and W each pooled by an integer factor, floor), a FuSe conv's [row, col]
# concatenation right after it, else the concatenation of two consecutive same-size outputs, nearest first.


def fuse_half(kind, name, c, h, w=None, pad=1):
    """A FuSe half on c channels as hwmodel.trace records it: 1x3 ("fuse_row", padded along W only)
    or 3x1 ("fuse_col", padded along H only), depthwise, stride 1."""
    w = h if w is None else w
    kh, kw, ph, pw = (1, 3, 0, pad) if kind == "fuse_row" else (3, 1, pad, 0)
    return Layer(name, kind, 1, c, h, w, c, kh, kw, 1, 1, ph, pw, 1, 1, c)


def test_graph_layer_after_a_lone_row_half_reads_the_nearest_tensor_not_a_concatenation():
    # Pins that the FuSe concatenation rule needs a row half two back AND a column half just before.
    # stem 8 x 12 x 12; a row-only FuSe conv reads 4 of its channels; mid (4 -> 4) reads the row half;
    # x needs 8 channels on 12 x 12: the nearest single tensor with them is the stem (mid 4, row 4),
    # so x reads the stem, and [row, mid] is no concatenation.  Nobody reads mid, and no later tensor
    # has its 4 x 12 x 12 shape (x's is 2 x 12 x 12): it folds into the next layer's output, x's.
    layers = [conv("stem", 3, 8, 12, k=3, p=1), fuse_half("fuse_row", "f.row", 4, 12),
              conv("mid", 4, 4, 12), conv("x", 8, 2, 12)]
    g = build_graph(layers)
    assert g.inputs == (Edge(NETWORK_INPUT, 0, 1, 1), Edge(0, 1, 1, 1), Edge(1, 2, 1, 1), Edge(0, 3, 1, 1))
    assert g.merges == ((2, 3),)


def test_graph_two_fuse_convs_at_the_start_with_an_odd_channel_split():
    # Pins the FuSe concatenation rule at i = 2, the first index it can apply to.  Two half FuSe convs
    # on 7 channels (c_row = (7 + 1) // 2 = 4, c_col = 3, as hwmodel.trace splits them) open the network.
    # f2.row (4 channels) comes right after f1's [row, col], so it reads a 4-channel slice of that
    # 7-channel concatenation (tensor 1), not f1.row's own 4-channel output, the nearest single match;
    # f2.col copies f2.row's edge; pw (7 -> 8) reads f2's concatenation (tensor 3).  Both pairs are
    # concatenations; every tensor is read.
    layers = [fuse_half("fuse_row", "f1.row", 4, 12), fuse_half("fuse_col", "f1.col", 3, 12),
              fuse_half("fuse_row", "f2.row", 4, 12), fuse_half("fuse_col", "f2.col", 3, 12),
              conv("pw", 7, 8, 12)]
    g = build_graph(layers)
    assert g.inputs == (Edge(NETWORK_INPUT, 0, 1, 1), Edge(NETWORK_INPUT, 1, 1, 1), Edge(1, 2, 1, 1),
                        Edge(1, 3, 1, 1), Edge(3, 4, 1, 1))
    assert g.merges == ((0, 1), (2, 3))


def test_graph_fuse_concatenation_adds_the_row_and_column_channel_counts():
    # Pins c_row + c_col (not twice either half): stem 7 x 12 x 12, a FuSe conv split 4 + 3, pw 7 -> 8.
    # pw reads the 7-channel [row, col] concatenation (tensor 2), even though the stem too has 7 x 12 x 12.
    layers = [conv("stem", 3, 7, 12, k=3, p=1), fuse_half("fuse_row", "f.row", 4, 12),
              fuse_half("fuse_col", "f.col", 3, 12), conv("pw", 7, 8, 12)]
    g = build_graph(layers)
    assert g.inputs == (Edge(NETWORK_INPUT, 0, 1, 1), Edge(0, 1, 1, 1), Edge(0, 2, 1, 1), Edge(2, 3, 1, 1))
    assert g.merges == ((1, 2),)


def test_graph_fuse_halves_of_different_sizes_are_not_concatenated():
    # Pins the same-size check of the FuSe rule.  Without padding, the 1x3 row half maps 12 x 12 to
    # 12 x 10 and the 3x1 column half to 10 x 12: they cannot be concatenated.  x (8 channels, 3 x 3)
    # then reads the stem's 8 x 12 x 12 pooled by 12 // 3 = 4 on both axes.  (The mismatched pair taken
    # as 8 x 10 x 12 would pool by 10 // 3 = 3 and 12 // 3 = 4.)  Neither half is read: the row half's
    # 4 x 12 x 10 has no later twin (col 4 x 10 x 12, x 2 x 3 x 3), so it folds into the next layer,
    # the column half; the column half folds into x.
    layers = [conv("stem", 3, 8, 12, k=3, p=1), fuse_half("fuse_row", "f.row", 4, 12, pad=0),
              fuse_half("fuse_col", "f.col", 4, 12, pad=0), conv("x", 8, 2, 3)]
    assert (tensor_shape(layers, 1), tensor_shape(layers, 2)) == ((4, 12, 10), (4, 10, 12))
    g = build_graph(layers)
    assert g.inputs == (Edge(NETWORK_INPUT, 0, 1, 1), Edge(0, 1, 1, 1), Edge(0, 2, 1, 1), Edge(0, 3, 4, 4))
    assert g.merges == ((1, 2), (2, 3))


def test_graph_fuse_concatenation_pooled_per_axis_and_the_layers_after_it():
    # Pins the pooling of the FuSe rule's edge, H and W apart, and that the layers after its reader are
    # still placed.  x reads [row, col] (8 x 12 x 12) on 6 x 4: pooled by 12 // 6 = 2 along H and
    # 12 // 4 = 3 along W; y (16 -> 4 on 6 x 4) then reads x, unpooled.
    layers = [conv("stem", 3, 8, 12, k=3, p=1), fuse_half("fuse_row", "f.row", 4, 12),
              fuse_half("fuse_col", "f.col", 4, 12), conv("x", 8, 16, 6, 4), conv("y", 16, 4, 6, 4)]
    g = build_graph(layers)
    assert g.inputs == (Edge(NETWORK_INPUT, 0, 1, 1), Edge(0, 1, 1, 1), Edge(0, 2, 1, 1), Edge(2, 3, 2, 3),
                        Edge(3, 4, 1, 1))
    assert g.merges == ((1, 2),) and g.consumers(3) == [4]


def test_graph_fuse_concatenation_flattened_into_a_linear_layer():
    # Pins the flatten flag on the FuSe rule's edge: fc's 128 inputs are the 8-channel [row, col]
    # concatenation pooled by 3 (12 // 3 = 4, 8 * 4 * 4 = 128; p = 1 and 2 give 1152 and 288).
    layers = [conv("stem", 3, 8, 12, k=3, p=1), fuse_half("fuse_row", "f.row", 4, 12),
              fuse_half("fuse_col", "f.col", 4, 12), Layer("fc", "linear", 1, 128, 1, 1, 10)]
    g = build_graph(layers)
    assert g.inputs[3] == Edge(2, 3, 3, 3, True) and g.merges == ((1, 2),)


def test_graph_single_tensor_pooled_per_axis():
    # Pins the pooling of a single-tensor edge, H and W apart: x reads the stem's 12 x 12 on 6 x 4,
    # pooled by 2 along H and 3 along W.
    g = build_graph([conv("stem", 3, 8, 12, k=3, p=1), conv("x", 8, 2, 6, 4)])
    assert g.inputs == (Edge(NETWORK_INPUT, 0, 1, 1), Edge(0, 1, 2, 3, False))


def test_graph_two_branch_concatenation_pooled_per_axis_and_flattened():
    # Pins the pooling (H and W apart) and the flatten flag of an edge from the fallback
    # concatenation of two consecutive outputs.  Off a (4 x 12 x 12): b3 (4 -> 3) and c5 (4 -> 5, which
    # cannot read b3, so reads a).  Nothing single has 8 channels, so:
    # * e (8 channels on 6 x 4) reads [b3, c5] pooled by 2 along H and 3 along W;
    # * fc (128 inputs) reads [b3, c5] flattened after pooling by 3 (8 * 4 * 4 = 128); no single tensor
    #   will do: 128 is no multiple of 5 or 3, and 4 * (12 // p)^2 is never 128.
    a, b3, c5 = conv("a", 4, 4, 12, k=3, p=1), conv("b3", 4, 3, 12), conv("c5", 4, 5, 12)
    branches = (Edge(NETWORK_INPUT, 0, 1, 1), Edge(0, 1, 1, 1), Edge(0, 2, 1, 1))
    g = build_graph([a, b3, c5, conv("e", 8, 2, 6, 4)])
    assert g.inputs == (*branches, Edge(2, 3, 2, 3, False)) and g.merges == ((1, 2),)
    g = build_graph([a, b3, c5, Layer("fc", "linear", 1, 128, 1, 1, 10)])
    assert g.inputs == (*branches, Edge(2, 3, 3, 3, True)) and g.merges == ((1, 2),)


def test_graph_concatenation_found_behind_a_change_of_map_size():
    # Pins that the fallback search skips a pair of different sizes and goes on to older pairs.
    # a (4 -> 3) and b (4 -> 5) both read the 4 x 12 x 12 input (b cannot read a's 3 channels);
    # d (1x1 stride 2) maps the input to 6 x 6 x 6.  e (8 channels on 12 x 12) has no single tensor;
    # the nearest pair [b, d] differs in size (12 x 12 against 6 x 6), the next, [a, b], is 8 x 12 x 12.
    # d is read by nobody and e's 2 x 12 x 12 is not its shape: it folds into e.
    layers = [conv("a", 4, 3, 12), conv("b", 4, 5, 12), conv("d", 4, 6, 12, s=2), conv("e", 8, 2, 12)]
    g = build_graph(layers)
    assert g.inputs == (Edge(NETWORK_INPUT, 0, 1, 1), Edge(NETWORK_INPUT, 1, 1, 1), Edge(NETWORK_INPUT, 2, 1, 1),
                        Edge(1, 3, 1, 1))
    assert g.merges == ((0, 1), (2, 3))


def test_graph_unplaceable_layer_message_in_full():
    # The whole message: z wants 5 channels, and only a's 4 x 8 x 8 and the 4 x 8 x 8 input exist.
    with pytest.raises(ValueError) as info:
        build_graph([conv("a", 4, 4, 8, k=3, p=1), conv("z", 5, 2, 8)])
    assert str(info.value) == (
        "cannot tell where layer 1 ('z', input 5x8x8) reads from: no earlier layer output (or the network "
        "input) has its channels and a size that pools down to its size")


# ---------------------------------------------------------------------------- third run's survivors


def test_conv_shape_pads_each_axis_on_both_sides():
    # Padding (1, 2) on a 5 x 4 input, 3x3 kernel: the padded input is 5 + 2*1 = 7 by 4 + 2*2 = 8
    # (padding on both sides, per axis); out (7 - 3) + 1 = 5 by (8 - 3) + 1 = 6.
    layer = Layer("pw", "conv", 1, 2, 5, 4, 2, kernel_h=3, kernel_w=3, pad_h=1, pad_w=2)
    assert eng.conv_shape(layer) == eng.ConvShape(groups=1, m=2, n=2, r=5, c=6, kh=3, kw=3, sh=1, sw=1, ext_h=3,
                                                  ext_w=3, in_h=7, in_w=8, batch=1)


def test_as_layers_messages_in_full_and_the_no_torch_fallback(monkeypatch):
    # The two refusals of a module, word for word (ValueError with exactly this text).
    nn = pytest.importorskip("torch.nn")
    with pytest.raises(ValueError) as info:
        estimate(nn.Conv2d(3, 4, 1), device=TOY)
    assert str(info.value) == "input_shape is required when model_or_layers is an nn.Module, e.g. (1, 3, 224, 224)"
    with pytest.raises(ValueError) as info:
        estimate(nn.Sequential(nn.ReLU()), input_shape=(1, 3, 4, 4), device=TOY)
    assert str(info.value) == "the model has no conv or linear layers to place on the FPGA"
    # Without torch.nn importable nothing can be a module: a non-layer argument gets the TypeError.
    monkeypatch.setitem(sys.modules, "torch.nn", None)
    with pytest.raises(TypeError, match="^model_or_layers must be an nn.Module or a list of hwmodel.Layer, got str$"):
        estimate("c1", device=TOY)


def test_match_needs_both_axes_to_pool_and_flattens_only_into_linear_layers():
    from hwmodel.fpga.graph import _match

    # A 4-channel conv on 4 x 3 against a 4 x 8 x 8 tensor: H pools by 2 (8 // 2 = 4), but no
    # factor takes W from 8 to 3 (8 // 2 = 4, 8 // 3 = 2): no match.  The same tensor on 4 x 4: (2, 2).
    assert _match(conv("x", 4, 2, 4, 3), (4, 8, 8)) is None
    assert _match(conv("x", 4, 2, 4, 4), (4, 8, 8)) == (2, 2, False)
    # A conv on a 1 x 1 map with 4 input channels does not flatten a 1 x 2 x 2 tensor (1 * 2 * 2 = 4):
    # only a linear layer matches a tensor it flattens; a linear layer with 4 inputs does, unpooled.
    assert _match(conv("x", 4, 2, 1), (1, 2, 2)) is None
    assert _match(Layer("fc", "linear", 1, 4, 1, 1, 2), (1, 2, 2)) == (1, 1, True)


def test_estimate_refuses_a_layer_without_output():
    """A kernel larger than its padded input (or block) leaves no output pixel: refused by name,
    rather than costed with a negative output size."""
    with pytest.raises(ValueError, match=r"^layer 'x' has no output along H: a kernel of 5 \(dilation 1\) does not "
                                         r"fit 2 input pixels with padding 1$"):
        estimate([Layer("x", "conv", 1, 1, 2, 2, 1, kernel_h=5, kernel_w=5, pad_h=1, pad_w=1)])
    with pytest.raises(ValueError, match=r"^layer 'd' has no output along W: a kernel of 3 \(dilation 2\)"):
        estimate([Layer("d", "conv", 1, 1, 9, 4, 1, kernel_h=3, kernel_w=3, dilation_w=2)])  # spans 5 > 4
    blocked = Layer("b", "conv", 1, 1, 6, 6, 1, kernel_h=3, kernel_w=1, block_rows=((0, 4), (4, 6)))
    with pytest.raises(ValueError, match=r"^layer 'b' has no output along H: .* fit 2 input pixels"):
        estimate([blocked], schedule="block-fused")  # the whole map fits the kernel, its 2-pixel block does not
    # A kernel that exactly fits gives one output pixel and is costed.
    fits = Layer("e", "conv", 1, 1, 3, 5, 1, kernel_h=5, kernel_w=5, pad_h=1)
    assert estimate([fits]).macs == 25  # a 1x1 output of 5x5 taps
