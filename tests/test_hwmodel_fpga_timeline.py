"""The FPGA model's time: DRAM efficiency, double buffering, phases in sequence, prefetch.

Every expected number is worked out in the comments from the rules in
hwmodel/fpga/timeline.py's and devices.py's docstrings, on numbers small enough to follow.
"""

from __future__ import annotations

from dataclasses import replace

import pytest

from hwmodel.fpga import DEVICES, Device, DramAccess, Engine, estimate
from hwmodel.fpga import engine as eng
from hwmodel.fpga import schedule as sch
from hwmodel.fpga.graph import build_graph
from hwmodel.fpga.networks import alexnet_two_group, resnet18, vgg16
from hwmodel.fpga.timeline import Phase, Transfer, run
from hwmodel.layers import Layer

# 1 MB/s of DRAM and a 1 MHz clock: a byte takes 1 us, a cycle 1 us.
SLOW = Device("slow", dsp=100, bram_bytes=1000, dram_gbps=0.001, freq_mhz=1.0)


# ---------------------------------------------------------------------------- DRAM access

def test_sustained_rate_by_burst_efficiency_and_port():
    access = DramAccess(efficiency=0.8, half_burst_bytes=128)
    # 10 GB/s x 0.8 x 128 / (128 + 128) = 4 GB/s; x 384 / 512 = 6 GB/s.
    assert access.rate(10.0, 128) == pytest.approx(4e9, rel=1e-12)
    assert access.rate(10.0, 384) == pytest.approx(6e9, rel=1e-12)
    # The accelerator's ports cap it at 5 GB/s.
    capped = DramAccess(efficiency=0.8, half_burst_bytes=128, port_gbps=5.0)
    assert capped.rate(10.0, 384) == pytest.approx(5e9, rel=1e-12)
    assert capped.rate(10.0, 128) == pytest.approx(4e9, rel=1e-12)  # under the cap: unchanged
    # An ideal access is the peak for any burst.
    assert DramAccess().rate(2.0, 1) == 2e9
    with pytest.raises(ValueError, match="burst_bytes must be > 0, got 0"):
        access.rate(10.0, 0)


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"efficiency": 0}, ValueError, "DramAccess.efficiency must be a number > 0, got 0"),
        ({"efficiency": 1.5}, ValueError, r"DramAccess.efficiency must be in \(0, 1\], got 1.5"),
        ({"efficiency": True}, ValueError, "DramAccess.efficiency must be a number > 0, got True"),
        ({"half_burst_bytes": -1}, ValueError, "DramAccess.half_burst_bytes must be a number >= 0, got -1"),
        ({"port_gbps": 0}, ValueError, "DramAccess.port_gbps must be a number > 0, got 0"),
        ({"duplex": "yes"}, TypeError, "DramAccess.duplex must be a bool, got str"),
    ],
)
def test_dram_access_rejects(kwargs, error, message):
    with pytest.raises(error, match=f"^{message}$"):
        DramAccess(**kwargs)


def test_device_rejects_unknown_family_and_access():
    with pytest.raises(ValueError, match=r"Device.dsp_family must be one of \['DSP48E1', 'DSP48E2', 'intel-sv', "
                                         r"'intel-vp'\], got 'DSP58'"):
        Device("d", 1, 1, 1.0, 1.0, dsp_family="DSP58")
    with pytest.raises(TypeError, match="^Device.dram must be a hwmodel.fpga.DramAccess, got float$"):
        Device("d", 1, 1, 1.0, 1.0, dram=0.8)


def test_the_estimate_states_the_dram_it_assumed():
    board = Device("b", 300, 1_000_000, 10.0, 100.0, dram=DramAccess(0.8, 128, port_gbps=5.0, source="my board"))
    est = estimate([Layer("c", "conv", 1, 4, 8, 8, 4, 3, 3, 1, 1, 1, 1)], device=board, engine=Engine(4, 4))
    assert est.assumptions[1] == (
        "DRAM sustains 10 GB/s peak x 0.8 x b/(b + 128 B) for bursts of b contiguous bytes, capped at 5 GB/s per "
        "direction by the accelerator's ports; reads and writes share one bus (my board)")


# ---------------------------------------------------------------------------- phases

def test_a_phase_overlaps_all_but_its_first_reads_and_last_writes():
    # 1000 read bytes (1 ms) and 600 written (0.6 ms) in 2 steps, 0.1 ms of compute.  One bus:
    # fill 0.5 ms, drain 0.3 ms, the other 0.8 ms of transfers outlast the compute, and the last
    # step's 0.05 ms of compute sits between its read and its write: 0.5 + 0.85 + 0.3 = 1.65 ms.
    # As a schedule: R1 0-0.5, C1 0.5-0.55, R2 0.55-1.05, W1 1.05-1.35, C2 1.05-1.1, W2 1.35-1.65.
    phase = Phase(100, 2, (Transfer("input", 1000, 1000), Transfer("output", 600, 600, write=True)), 0)
    (t,) = run([phase], SLOW, 1e6)
    assert (t.compute_s, t.read_s, t.write_s) == pytest.approx((1e-4, 1e-3, 6e-4), rel=1e-12)
    assert t.time_s == pytest.approx(1.65e-3, rel=1e-12) and t.bound == "memory"
    # Reads and writes on separate memories: R1 0-0.5, C1 0.5-0.55, R2 0.5-1.0 beside W1 0.55-0.85,
    # C2 1.0-1.05, W2 1.05-1.35: 1.35 ms.
    duplex = Device("duplex", 100, 1000, 0.001, 1.0, dram=DramAccess(duplex=True))
    (t,) = run([phase], duplex, 1e6)
    assert t.time_s == pytest.approx(1.35e-3, rel=1e-12)
    # Compute-bound: 5 ms of compute hides everything but the fill and drain: 0.5 + 5 + 0.3.
    (t,) = run([Phase(5000, 2, phase.transfers, 0)], SLOW, 1e6)
    assert t.time_s == pytest.approx(5.8e-3, rel=1e-12) and t.bound == "compute"


def test_short_bursts_are_slow():
    # 1000 bytes in 128-byte bursts at 1 MB/s x 0.8 x 128 / 256: 0.4 MB/s, 2.5 ms.
    board = Device("b", 100, 1000, 0.001, 1.0, dram=DramAccess(0.8, 128))
    (t,) = run([Phase(1, 1, (Transfer("weights", 1000, 128),), 0)], board, 1e6)
    assert t.read_s == pytest.approx(2.5e-3, rel=1e-12)


@pytest.mark.parametrize(
    ("bram", "buffer", "prefetchable", "hidden", "time"),
    [
        # Phase A computes 1 ms with no transfers, leaving the DRAM idle for 1 ms (1000 bytes' worth).
        # B reads 2000 bytes of weights (2 ms) and computes 10 us.  With 1000 bytes of BRAM and A using
        # 400, B prefetches 600 bytes: 1.4 ms of reads left, then 10 us: 1.41 ms.
        (1000, 400, True, 600, 1.41e-3),
        # 5000 bytes of BRAM: the idle time, not the buffer, is the limit: 1000 bytes, 1.01 ms.
        (5000, 400, True, 1000, 1.01e-3),
        # A fills the BRAM: nothing can be fetched early: 2.01 ms.
        (1000, 1000, True, 0, 2.01e-3),
        # An intermediate map is B's input, written by A: it cannot be fetched before A ends.
        (5000, 400, False, 0, 2.01e-3),
    ],
)
def test_prefetch_is_limited_by_free_block_ram_and_idle_dram(bram, buffer, prefetchable, hidden, time):
    device = Device("d", 100, bram, 0.001, 1.0)
    kind = "weights" if prefetchable else "intermediate"
    a = Phase(1000, 1, (), buffer)
    b = Phase(10, 1, (Transfer(kind, 2000, 2000, prefetchable=prefetchable),), 0)
    ta, tb = run([a, b], device, 1e6)
    assert ta.time_s == pytest.approx(1e-3, rel=1e-12)
    assert tb.prefetched_bytes == hidden
    assert tb.time_s == pytest.approx(time, rel=1e-12)


# ---------------------------------------------------------------------------- linear layers and batches

def test_a_linear_layer_holds_its_batch_on_chip_and_reads_each_weight_once():
    # 100 -> 50 features, batch 8, Engine(10, 10): the engine sees a 1 x 8 map.  400 cycles:
    # ceil(50/10) * ceil(100/10) * 8.
    fc = Layer("fc", "linear", 8, 100, 1, 1, 50)
    e = Engine(10, 10)
    assert eng.compute_cycles(fc, e) == 400
    # Zhang's order: the 10 x 8 input tile (80 words) is loaded for each of the 5 x 10 weight tiles:
    # 4000 words; weights 50 tiles x 100 = 5000 words, each once for all 8 images; outputs 5 x 80 = 400.
    t = eng.tile_traffic(fc, e, 1, 8)
    assert (t.input_words, t.weight_words, t.output_words) == (4000, 5000, 400)
    # Holding all 100 features of the 8 vectors (800 words) on chip: the input is read once.
    held = eng.tile_traffic(fc, e, 1, 8, hold_input=True)
    assert (held.input_words, held.weight_words, held.output_words) == (800, 5000, 400)
    assert held.buffer_words == 2 * (800 + 100 + 80)
    # best_tiles takes the held input when the 1960 words fit, Zhang's order when they do not.
    assert eng.best_tiles(fc, e, 1960).hold_input
    assert not eng.best_tiles(fc, e, 1959).hold_input


def test_block_groups_run_whole_map_layers_alone_after_the_blocks():
    # Two 2x2-blocked 3x3 convs (4 -> 4 on 8 x 8), then an unblocked 1x1 conv and a linear layer:
    # the unblocked layers need every block's output, so the group is three phases.
    blocks = ((0, 4), (4, 8))
    layers = [
        Layer("a", "conv", 1, 4, 8, 8, 4, 3, 3, 1, 1, 1, 1, block_rows=blocks, block_cols=blocks),
        Layer("b", "conv", 1, 4, 8, 8, 4, 3, 3, 1, 1, 1, 1, block_rows=blocks, block_cols=blocks),
        Layer("c", "conv", 1, 4, 8, 8, 4),
        Layer("fc", "linear", 1, 256, 1, 1, 10),
    ]
    assert sch._segments([4, 4, 1, 1]) == [range(0, 2), range(2, 3), range(3, 4)]
    assert sch._segments([4, 1, 4]) == [range(0, 1), range(1, 2), range(2, 3)]
    assert sch._segments([4, 16, 4]) == [range(0, 3)]  # several blocks everywhere: the group repeats whole
    ctx = sch.Context(build_graph(layers), Engine(4, 4), 16, 1_000_000)
    plan = sch.plan_block(ctx, 0, 4)
    assert plan is not None and [p.cycles for p in plan.phases] == [
        sum(plan.layer_cycles[:2]), plan.layer_cycles[2], plan.layer_cycles[3]]
    # Every byte of the plan is in exactly one phase, by kind.
    moved = sch.empty_traffic()
    for phase in plan.phases:
        for t in phase.transfers:
            moved[t.kind] += t.nbytes
    assert moved == plan.traffic
    # The network input is read by the first phase; the output is written by the last.
    assert [t.kind for t in plan.phases[0].transfers if not t.write and t.kind != "weights"] == ["input"]
    assert [t.kind for t in plan.phases[-1].transfers if t.write] == ["output"]


# ---------------------------------------------------------------------------- whole networks

NETS = {
    "vgg16-F28": lambda: vgg16(28),
    "resnet18-F28": lambda: resnet18(28),
    "resnet18-H4": lambda: resnet18(4, "hierarchical"),
    "alexnet": lambda: alexnet_two_group(classifier=True),
    "resnet18-F28-batch2": lambda: [replace(x, batch=2) for x in resnet18(28)],
}


@pytest.mark.parametrize("net", list(NETS))
def test_every_byte_and_cycle_of_a_plan_is_in_exactly_one_phase(net):
    layers = NETS[net]()
    ctx = sch.Context(build_graph(layers), Engine(64, 14), 16, 545 * 4096)
    modes = ["layer", "tiled"] + (["block"] if sch.has_block_convs(layers) else [])
    for mode in modes:
        for objective in sch.OBJECTIVES:
            for plan in sch.choose_groups(ctx, mode, objective):
                moved = sch.empty_traffic()
                for phase in plan.phases:
                    for t in phase.transfers:
                        moved[t.kind] += t.nbytes
                assert moved == plan.traffic, (mode, objective, plan.start, plan.stop)
                assert sum(p.cycles for p in plan.phases) == plan.cycles


@pytest.mark.parametrize("net", list(NETS))
def test_sustained_bandwidth_never_beats_the_dram(net):
    # Prefetched bytes move too: they count in the DRAM's busy time, in the phase before.
    for schedule in ("layer", "block-fused", "tiled-fused"):
        layers = NETS[net]()
        if schedule == "block-fused" and not sch.has_block_convs(layers):
            continue
        est = estimate(layers, device="zc706", bits=16, schedule=schedule)
        assert est.sustained_gbps <= 12.8 * 0.8 * (1 + 1e-9), (schedule, est.sustained_gbps)


def test_transfers_reject_negative_bytes_and_empty_bursts():
    with pytest.raises(ValueError, match="^Transfer.nbytes must be >= 0, got -1$"):
        Transfer("input", -1, 64)
    with pytest.raises(ValueError, match="^Transfer.burst must be > 0, got 0$"):
        Transfer("input", 64, 0)


def test_prefetch_also_needs_room_in_the_receiving_phase():
    # A leaves 5000 - 400 bytes free and 1 ms of idle DRAM (1000 bytes' worth).  B's own buffers take
    # all but 100 bytes of the BRAM, and its first of 4 steps brings 500 bytes into them: 600 bytes
    # can wait on chip, so 600 are prefetched, not 1000.  B: 1400 bytes left (1.4 ms), compute 10 us
    # in 4 steps: 0.35 + max(10 us, 1.05 ms + 2.5 us) = 1.4025 ms.
    device = Device("d", 100, 5000, 0.001, 1.0)
    a = Phase(1000, 1, (), 400)
    b = Phase(10, 4, (Transfer("weights", 2000, 2000, prefetchable=True),), 4900)
    _, tb = run([a, b], device, 1e6)
    assert tb.prefetched_bytes == 600 and tb.prefetch_s == pytest.approx(0.6e-3, rel=1e-12)
    assert tb.time_s == pytest.approx(1.4025e-3, rel=1e-12)


def test_fully_connected_weights_cannot_hide_behind_the_convolutions():
    # Block VGG-16 on ZC706: the FC phases prefetch at most the block RAM, and take at least the rest
    # of their weights at the best rate the DRAM gives (long bursts: 12.8 GB/s x 0.8 x b/(b + 128)).
    est = estimate(vgg16(28), device="zc706", bits=16, schedule="block-fused", objective="intermediate")
    (plan,) = sch.choose_groups(
        sch.Context(build_graph(vgg16(28)), est.engine, 16, DEVICES["zc706"].bram_bytes), "block", "intermediate")
    times = run(plan.phases, DEVICES["zc706"], 150e6)
    fc = [(p, t) for p, t in zip(plan.phases, times) if p.cycles < 150_000]  # fc6-fc8: 114,688 cycles at most
    assert len(fc) == 3
    bram = 545 * 4096
    for phase, t in fc:
        weights = sum(x.nbytes for x in phase.transfers if x.kind == "weights")
        assert t.prefetched_bytes <= bram
        assert t.time_s >= (weights - bram) / (12.8e9 * 0.8)
    assert est.groups[0]["bound"] == "mixed"  # compute-bound convs, then DRAM-bound FC layers


def test_a_linear_layer_in_a_block_group_holds_the_whole_batch():
    # A blocked 3x3 conv (2 -> 2 on 4 x 4, 2 x 2 blocks) flattened into a linear layer (32 -> 3).  The
    # linear layer runs once for the whole batch, so all N flattened maps (N x 32 words) and its N
    # outputs are on chip together: at N = 8, at least 8 x 32 x 2 bytes.
    blocks = ((0, 2), (2, 4))
    def net(n):
        return [Layer("a", "conv", n, 2, 4, 4, 2, 3, 3, 1, 1, 1, 1, block_rows=blocks, block_cols=blocks),
                Layer("fc", "linear", n, 32, 1, 1, 3)]
    big = Device("big", 1000, 10**6, 10.0, 100.0)
    one = estimate(net(1), device=big, engine=Engine(2, 2), schedule="block-fused")
    eight = estimate(net(8), device=big, engine=Engine(2, 2), schedule="block-fused")
    assert len(one.groups) == len(eight.groups) == 1
    assert eight.buffer_bytes >= 2 * (8 * 32 + 8 * 3) > one.buffer_bytes
    # Block VGG-16: at batch 64 the 64 flattened conv5 outputs (3.2 MB) do not fit the ZC706's
    # 2.23 MB beside the FC layers, so the one group of batch 1 splits and maps cross DRAM.
    single = estimate(vgg16(28), device="zc706", bits=16, schedule="block-fused", objective="intermediate")
    many = estimate([replace(x, batch=64) for x in vgg16(28)], device="zc706", bits=16, schedule="block-fused",
                    objective="intermediate")
    assert len(single.groups) == 1 and single.dram_bytes["intermediate"] == 0
    assert len(many.groups) > 1 and many.dram_bytes["intermediate"] > 0
    assert many.fits and many.buffer_bytes <= DEVICES["zc706"].bram_bytes


def test_tiled_fused_leaves_linear_layers_to_the_tiled_engine():
    # A batch-8 FC layer: the same cycles in every schedule (ceil(4096/64) * ceil(4096/14) * 8).
    fc = [replace(x, batch=8) for x in vgg16()[-3:]]
    by_layer = estimate(fc, device="zc706", bits=16, engine=Engine(64, 14))
    tiled = estimate(fc, device="zc706", bits=16, engine=Engine(64, 14), schedule="tiled-fused")
    assert [r["cycles"] for r in tiled.layers] == [r["cycles"] for r in by_layer.layers]
    assert tiled.layers[1]["cycles"] == 64 * 293 * 8
    assert all(g["mode"] == "layer" for g in tiled.groups)
