"""``estimate``: latency, fps, DRAM traffic and on-chip buffering of a network on an FPGA."""

from __future__ import annotations

from dataclasses import dataclass, field

from hwmodel.fpga import engine as eng
from hwmodel.fpga import schedule as sch
from hwmodel.fpga import timeline
from hwmodel.fpga.devices import IDEAL_DRAM, Device, get_device
from hwmodel.fpga.graph import block_count, build_graph, input_spans, output_spans
from hwmodel.layers import Layer

SCHEDULES = {"layer": "layer", "block-fused": "block", "tiled-fused": "tiled"}


@dataclass
class FpgaEstimate:
    """What :func:`estimate` returns.  Bytes are 1-byte units, rates use 1e9 (GB/s, GOPS)."""

    device: Device
    bits: int
    schedule: str
    engine: eng.Engine
    freq_mhz: float
    latency_s: float
    fps: float
    gops: float  # useful ops (2 per MAC) per second; recomputed MACs don't count
    dsp_used: int
    dram_bytes: dict[str, int]  # input, weights, output, intermediate
    buffer_bytes: int  # peak on-chip need
    fits: bool
    macs: int
    extra_macs: int  # recomputed by overlapping tiles ("tiled-fused")
    compute_roof_gops: float  # the array's peak: 2 * Tm * Tn * f
    ctc: float  # computation-to-communication ratio: ops per DRAM byte
    sustained_gbps: float  # DRAM bytes / DRAM busy time: the bandwidth the bursts achieved
    layers: list[dict] = field(default_factory=list)
    groups: list[dict] = field(default_factory=list)
    assumptions: list[str] = field(default_factory=list)

    @property
    def total_dram_bytes(self) -> int:
        return sum(self.dram_bytes.values())

    @property
    def attainable_gops(self) -> float:
        """Roofline: min(computational roof, CTC x the sustained bandwidth)."""
        return min(self.compute_roof_gops, self.ctc * self.sustained_gbps)

    def summary(self) -> str:
        mb = {k: v / 1e6 for k, v in self.dram_bytes.items()}
        return (
            f"{self.schedule} on {self.device.name} ({self.bits}-bit, Tm={self.engine.tm} Tn={self.engine.tn}, "
            f"{self.dsp_used}/{self.device.dsp} DSP, {self.freq_mhz:g} MHz): {self.latency_s * 1e3:.2f} ms, "
            f"{self.fps:.2f} fps, {self.gops:.1f} GOPS (roof {self.compute_roof_gops:.0f}, CTC {self.ctc:.1f} op/B, "
            f"attainable {self.attainable_gops:.0f}); DRAM {self.total_dram_bytes / 1e6:.2f} MB "
            f"(input {mb['input']:.2f}, weights {mb['weights']:.2f}, output {mb['output']:.2f}, "
            f"intermediate {mb['intermediate']:.2f}); buffer {self.buffer_bytes / 1e6:.2f} of "
            f"{self.device.bram_bytes / 1e6:.2f} MB ({'fits' if self.fits else 'DOES NOT FIT'})"
        )

    def __str__(self) -> str:
        parts = [self.summary(), "", _text_table(self.groups), "", _text_table(self.layers), "", "Assumptions:"]
        parts += [f"- {a}" for a in self.assumptions]
        return "\n".join(parts)


def _text_table(rows: list[dict]) -> str:
    if not rows:
        return ""
    columns = list(rows[0])
    cells = [[format_cell(row[c]) for c in columns] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths)), "  ".join("-" * w for w in widths)]
    lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths)) for r in cells]
    return "\n".join(lines)


def format_cell(value: object) -> str:
    """A table cell: floats to 3 significant digits below 1000, thousands separators above."""
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 1000 else f"{value:,.0f}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return str(value)


def _as_layers(model_or_layers: object, input_shape: tuple[int, ...] | None) -> list[Layer]:
    from hwmodel.onnx_reader import is_onnx_source, read_onnx

    if is_onnx_source(model_or_layers):
        layers = list(read_onnx(model_or_layers, batch=input_shape[0] if input_shape else 1))
        if not layers:
            raise ValueError("the ONNX model has no conv or linear layers to place on the FPGA")
        return layers
    if isinstance(model_or_layers, list | tuple) and all(isinstance(x, Layer) for x in model_or_layers):
        if not model_or_layers:
            raise ValueError("model_or_layers is an empty layer list")
        return list(model_or_layers)
    try:
        import torch.nn as nn
    except ImportError:  # pragma: no cover - torch is a hard dependency
        nn = None
    if nn is not None and isinstance(model_or_layers, nn.Module):
        if input_shape is None:
            raise ValueError("input_shape is required when model_or_layers is an nn.Module, e.g. (1, 3, 224, 224)")
        from hwmodel.trace import trace  # lazily: trace imports torch modules of its own

        layers = list(trace(model_or_layers, tuple(input_shape)))
        if not layers:
            raise ValueError("the model has no conv or linear layers to place on the FPGA")
        return layers
    raise TypeError(
        f"model_or_layers must be an nn.Module or a list of hwmodel.Layer, got {type(model_or_layers).__name__}"
    )


def _check_outputs(layers: list[Layer]) -> None:
    """Every layer (every block of a blocked one) must have at least one output pixel per axis:
    the tiling divides by the output's size, and a negative size would give negative traffic."""
    for layer in layers:
        for axis, ins, outs, kernel, pad, dilation in zip(
                "HW", input_spans(layer), output_spans(layer), (layer.kernel_h, layer.kernel_w),
                (layer.pad_h, layer.pad_w), (layer.dilation_h, layer.dilation_w)):
            for (start, stop), (out_start, out_stop) in zip(ins, outs):
                if out_stop - out_start < 1:
                    raise ValueError(
                        f"layer {layer.name!r} has no output along {axis}: a kernel of {kernel} (dilation "
                        f"{dilation}) does not fit {stop - start} input pixels with padding {pad}")


def estimate(
    model_or_layers: object,
    *,
    input_shape: tuple[int, ...] | None = None,
    device: str | Device = "zc706",
    bits: int = 16,
    engine: eng.Engine | None = None,
    schedule: str = "layer",
    freq_mhz: float | None = None,
    objective: str = "traffic",
) -> FpgaEstimate:
    """Latency, fps, DRAM traffic by kind and on-chip buffer need of a network on an FPGA.

    Args:
        model_or_layers: an ``nn.Module`` (traced with ``hwmodel.trace.trace`` on
            ``input_shape``, (N, C, H, W)), an ONNX file or ``onnx.ModelProto`` (read by
            :func:`hwmodel.onnx_reader.read_onnx`; a dynamic batch takes
            ``input_shape[0]``, default 1) or a list of :class:`hwmodel.Layer`.
        device: a preset name from ``hwmodel.fpga.DEVICES`` or a :class:`Device`.
        bits: 32 (float), 16 or 8 (fixed point); the DSP cost of a MAC follows the
            device's DSP family (``hwmodel.fpga.DSP_FAMILIES``).
        engine: the MAC array; None explores (Tm, Tn) for the DSP budget.  Output tiles
            (Tr, Tc) left as None are chosen per layer for the BRAM budget.
        schedule: "layer", "block-fused" (needs block convs) or "tiled-fused".
        freq_mhz: the clock; None takes the device's typical clock.
        objective: how fused schedules group layers: "traffic" (least total DRAM
            traffic) or "intermediate" (least intermediate-map traffic first, then total).

    Raises:
        ValueError: unknown device or schedule, bits not 8/16/32, an engine needing more
            DSPs than the device has, "block-fused" on a network with no block convs.
    """
    dev = get_device(device)
    bits = eng.check_bits(bits)
    if not isinstance(schedule, str) or schedule not in SCHEDULES:
        raise ValueError(f"schedule must be one of {list(SCHEDULES)}, got {schedule!r}")
    if not isinstance(objective, str) or objective not in sch.OBJECTIVES:
        raise ValueError(f"objective must be one of {list(sch.OBJECTIVES)}, got {objective!r}")
    if freq_mhz is None:
        freq_mhz = dev.freq_mhz
    elif isinstance(freq_mhz, bool) or not isinstance(freq_mhz, int | float) or not freq_mhz > 0:
        raise ValueError(f"freq_mhz must be a number > 0, got {freq_mhz!r}")
    layers = _as_layers(model_or_layers, input_shape)
    _check_outputs(layers)
    if engine is None:
        engine = eng.explore_engine(layers, dev.dsp, bits, dev.dsp_family)
    elif not isinstance(engine, eng.Engine):
        raise TypeError(f"engine must be a hwmodel.fpga.Engine or None, got {type(engine).__name__}")
    dsp_used = engine.dsp(bits, dev.dsp_family)
    if dsp_used > dev.dsp:
        raise ValueError(
            f"engine Tm={engine.tm} x Tn={engine.tn} at {bits} bits needs {dsp_used} {dev.dsp_family} DSPs, "
            f"but {dev.name} has {dev.dsp}"
        )
    if schedule == "block-fused" and not sch.has_block_convs(layers):
        raise ValueError(
            "schedule='block-fused' needs a network with block convolutions (layers with block_rows/block_cols); "
            "this one has none: use schedule='layer' or 'tiled-fused', or a block variant of the model"
        )
    graph = build_graph(layers)
    ctx = sch.Context(graph, engine, bits, dev.bram_bytes)
    plans = sch.choose_groups(ctx, SCHEDULES[schedule], objective)
    return _collect(layers, plans, dev, bits, schedule, engine, float(freq_mhz), dsp_used)


def assumptions(dev: Device, bits: int, engine: eng.Engine, freq_mhz: float, batch: int) -> list[str]:
    """What an estimate takes for granted, in words, for its reader."""
    per_mac = eng.dsp_per_mac(bits, dev.dsp_family)
    return [
        f"one Tm={engine.tm} x Tn={engine.tn} MAC array for every layer at {freq_mhz:g} MHz, "
        f"{per_mac:g} {dev.dsp_family} DSP per {bits}-bit MAC; no control overhead between tiles",
        dev.dram.describe(dev.dram_gbps) if dev.dram != IDEAL_DRAM
        else f"DRAM at its {dev.dram_gbps:g} GB/s peak for every burst (the device names no DramAccess); "
        "reads and writes share one bus",
        "weights stored in the order the engine reads them (tile by tile); maps row-major, one burst per tile row, "
        "or per channel plane when a tile spans every column",
        "double-buffered tiles: a phase's reads and writes overlap its compute except the first step's reads and "
        "the last step's writes",
        "phases run in sequence (a layer waits for its input); weights and the network input of the next phase "
        "prefetch only into block RAM free in both phases, while the current phase's DRAM idles",
        f"batch {batch}: conv work repeats per image; fully connected weights are loaded once for the batch",
        "BN, activations, pooling and residual adds are free; identity shortcuts are not in the layer list",
    ]


def _bound(spans: list[timeline.PhaseTime]) -> str:
    """A group's pace: "compute" or "memory" when all its phases agree, "mixed" when they do not
    (block VGG-16's last group: compute-bound convs, then DRAM-bound fully connected layers)."""
    bounds = {t.bound for t in spans} or {"compute"}
    return bounds.pop() if len(bounds) == 1 else "mixed"


def _collect(layers, plans, dev, bits, schedule, engine, freq_mhz, dsp_used) -> FpgaEstimate:
    hz = freq_mhz * 1e6
    traffic = sch.empty_traffic()
    latency, buffer_peak, fits, extra, dram_busy = 0.0, 0, True, 0, 0.0
    group_rows, layer_rows = [], []
    phases = [phase for plan in plans for phase in plan.phases]
    times = iter(timeline.run(phases, dev, hz))
    for g, plan in enumerate(plans):
        spans = [next(times) for _ in plan.phases]
        time_s = sum(t.time_s for t in spans)
        compute_s = sum(t.compute_s for t in spans)
        dram_busy += sum(t.memory_s + t.prefetch_s for t in spans)
        latency += time_s
        buffer_peak = max(buffer_peak, plan.buffer_bytes)
        fits = fits and plan.fits and plan.buffer_bytes <= dev.bram_bytes
        extra += plan.extra_macs
        for k, v in plan.traffic.items():
            traffic[k] += v
        first, last = layers[plan.start].name, layers[plan.stop - 1].name
        group_ops = 2 * sum(layers[i].macs for i in range(plan.start, plan.stop))
        group_rows.append({
            "group": g, "layers": first if plan.stop - plan.start == 1 else f"{first} .. {last}",
            "n": plan.stop - plan.start, "mode": plan.mode, "units": plan.units,
            "dram_MB": plan.dram_bytes / 1e6, "inter_MB": plan.traffic["intermediate"] / 1e6,
            "weights_MB": plan.traffic["weights"] / 1e6, "buffer_KB": plan.buffer_bytes / 1e3,
            "ctc": group_ops / plan.dram_bytes if plan.dram_bytes else float("inf"),
            "ms": time_s * 1e3, "compute_ms": compute_s * 1e3,
            "bound": _bound(spans), "detail": plan.detail,
        })
        for offset, i in enumerate(range(plan.start, plan.stop)):
            layer = layers[i]
            cycles = plan.layer_cycles[offset]
            layer_rows.append({
                "layer": layer.name, "kind": layer.kind, "group": g,
                "in": f"{layer.in_channels}x{layer.in_h}x{layer.in_w}",
                "out": f"{layer.out_channels}x{layer.out_h}x{layer.out_w}",
                "k/s": f"{layer.kernel_h}x{layer.kernel_w}/{layer.stride_h}", "blocks": block_count(layer),
                "MMAC": layer.macs / 1e6, "extra_MMAC": plan.layer_extra_macs[offset] / 1e6,
                "cycles": cycles, "util": layer.macs / (engine.tm * engine.tn * cycles) if cycles else 0.0,
            })
    macs = sum(layer.macs for layer in layers)
    batch = layers[0].batch
    total = sum(traffic.values())
    return FpgaEstimate(
        device=dev, bits=bits, schedule=schedule, engine=engine, freq_mhz=freq_mhz, latency_s=latency,
        fps=batch / latency if latency > 0 else float("inf"), gops=2 * macs / latency / 1e9 if latency else 0.0,
        dsp_used=dsp_used, dram_bytes=traffic, buffer_bytes=buffer_peak, fits=fits, macs=macs, extra_macs=extra,
        compute_roof_gops=2 * engine.tm * engine.tn * hz / 1e9,
        ctc=2 * macs / total if total else float("inf"),
        sustained_gbps=total / dram_busy / 1e9 if dram_busy else dev.dram_gbps,
        layers=layer_rows, groups=group_rows, assumptions=assumptions(dev, bits, engine, freq_mhz, batch),
    )
