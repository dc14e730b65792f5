"""Latency of CNN layers on a systolic array, in cycles (the FuSeConv model and SCALE-Sim's).

Two accountings of the same mapping are offered (see docs/hwmodel-systolic.md):

* ``convention="fuseconv"``: the FuSeConv paper's analytical model (Selvam et al., DATE
  2021).  A layer is a GEMM of P outputs x M filters with reduction length T, cut into
  folds of X rows by Y columns; each fold costs ``T + r + c - 1`` cycles where r and c
  are the rows and columns that fold actually uses.
* ``convention="scalesim"``: SCALE-Sim 3's compute cycles.  Every fold pays the full
  fill and drain of the whole array, and a layer's count ends one cycle early (SCALE-Sim
  reports the index of the last cycle): ``folds * (T + X + Y - 2) - 1`` for "os".

Both conventions support the three dataflows; for "ws" and "is" the fuseconv convention
is our extension of the paper's model by the same rule (partial folds charged by what
they use).  ``fuse=True`` costs 1-D depthwise layers by the paper's FuSe-array mapping
in either convention: SCALE-Sim has no model of that hardware.

``memory=MemorySystem(...)`` adds SRAM and DRAM stalls and DRAM traffic to every GEMM-mapped
layer (:mod:`hwmodel.systolic_memory`, after SCALE-Sim's double-buffered scratchpads); without
it the array is fed for free and the cycles are the compute cycles alone.  Memory stalls of the FuSe 1-D mapping are not
modelled: such layers say so in ``LayerCost.memory_note`` and ``Estimate.memory_unmodelled``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from hwmodel.layers import Layer, Unsupported
from hwmodel.systolic_memory import ConvGeometry, MemoryCost, MemorySystem, gemm_memory_cost

DATAFLOWS = ("os", "ws", "is")
CONVENTIONS = ("fuseconv", "scalesim")
#: Categories of the cycle breakdown.
CATEGORIES = ("pointwise", "depthwise", "fuse_1d", "other")


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def _positive_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < 1:
        raise ValueError(f"{name} must be >= 1, got {value}")
    return value


#: Said by a layer whose memory stalls are not modelled.
FUSE_MEMORY_NOTE = "memory stalls not modelled for the FuSe 1-D mapping (compute cycles only)"


@dataclass(frozen=True)
class LayerCost:
    """One costed layer: its MACs, cycles and utilisation = MACs / (cycles * rows * cols).

    ``cycles`` is compute plus ``stall_cycles`` (the memory system's; 0 without one).  With
    a memory system the DRAM traffic in words is given too (None without one, or where
    ``memory_note`` says the layer's memory is not modelled)."""

    name: str
    kind: str
    category: str
    mapping: str  # "gemm", "per_group_gemm" or "fuse_1d"
    macs: int
    cycles: int
    utilization: float
    stall_cycles: int = 0
    ifmap_dram_words: int | None = None
    filter_dram_words: int | None = None
    ofmap_dram_words: int | None = None
    memory_note: str = ""

    @property
    def compute_cycles(self) -> int:
        return self.cycles - self.stall_cycles


@dataclass(frozen=True)
class Estimate:
    """Cycles of a network on one array.  ``total_cycles`` covers the costed layers only;
    ``complete`` says whether nothing was left unsupported."""

    rows: int
    cols: int
    dataflow: str
    convention: str
    fuse: bool
    layers: tuple[LayerCost, ...]
    unsupported: tuple[Unsupported, ...] = field(default=())
    memory: MemorySystem | None = None

    @property
    def total_cycles(self) -> int:
        """Compute plus stall cycles of the costed layers."""
        return sum(layer.cycles for layer in self.layers)

    @property
    def total_stall_cycles(self) -> int:
        return sum(layer.stall_cycles for layer in self.layers)

    @property
    def total_compute_cycles(self) -> int:
        return self.total_cycles - self.total_stall_cycles

    @property
    def dram_words(self) -> dict[str, int]:
        """DRAM words read (ifmap, filter) and written (ofmap) by the layers whose memory is
        modelled; empty without a memory system."""
        if self.memory is None:
            return {}
        return {key: sum(getattr(c, f"{key}_dram_words") or 0 for c in self.layers)
                for key in ("ifmap", "filter", "ofmap")}

    @property
    def memory_unmodelled(self) -> tuple[str, ...]:
        """Names of the layers whose memory stalls are not modelled (with a memory system)."""
        return tuple(c.name for c in self.layers if c.memory_note)

    @property
    def total_macs(self) -> int:
        return sum(layer.macs for layer in self.layers)

    @property
    def utilization(self) -> float:
        cycles = self.total_cycles
        return self.total_macs / (cycles * self.rows * self.cols) if cycles else 0.0

    @property
    def complete(self) -> bool:
        return not self.unsupported

    @property
    def breakdown(self) -> dict[str, int]:
        """Cycles per category: pointwise (1x1 convs), depthwise (KxK), fuse_1d (1xK and
        Kx1 depthwise), other (dense KxK convs, grouped convs, linear layers)."""
        totals = dict.fromkeys(CATEGORIES, 0)
        for layer in self.layers:
            totals[layer.category] += layer.cycles
        return totals

    def table_header(self) -> tuple[str, ...]:
        """The column names of :meth:`table_rows`."""
        if self.memory is None:
            return ("layer", "kind", "MACs", "cycles", "util %")
        return ("layer", "kind", "MACs", "compute", "stall", "cycles", "util %", "ifmap DRAM", "filter DRAM",
                "ofmap DRAM")

    def table_rows(self) -> list[tuple[object, ...]]:
        """(name, kind, MACs, cycles, utilisation %) per layer, for printing; with a memory
        system, compute and stall cycles and the DRAM words too ("-" where not modelled)."""
        if self.memory is None:
            return [(c.name, c.kind, c.macs, c.cycles, f"{100 * c.utilization:.1f}") for c in self.layers]

        def words(value):
            return "-" if value is None else value

        return [(c.name, c.kind, c.macs, c.compute_cycles, c.stall_cycles, c.cycles, f"{100 * c.utilization:.1f}",
                 words(c.ifmap_dram_words), words(c.filter_dram_words), words(c.ofmap_dram_words))
                for c in self.layers]

    def __str__(self) -> str:
        head = (f"{self.rows}x{self.cols} array, dataflow={self.dataflow}, convention={self.convention}, "
                f"fuse={self.fuse}: {self.total_cycles:,} cycles, {self.total_macs:,} MACs, "
                f"utilization {100 * self.utilization:.1f}%")
        parts = ", ".join(f"{k} {v:,}" for k, v in self.breakdown.items())
        text = f"{head}\n  breakdown: {parts}"
        if self.memory is not None:
            m = self.memory
            dram = self.dram_words
            text += (f"\n  memory: SRAM {m.ifmap_sram_kb}/{m.filter_sram_kb}/{m.ofmap_sram_kb} kB, "
                     f"{m.dram_words_per_cycle} words/cycle: {self.total_stall_cycles:,} stall cycles; DRAM words "
                     f"ifmap {dram['ifmap']:,}, filter {dram['filter']:,}, ofmap {dram['ofmap']:,}")
            if self.memory_unmodelled:
                text += (f"\n  memory NOT modelled for {len(self.memory_unmodelled)} FuSe 1-D layer(s) "
                         f"(compute cycles only): {', '.join(self.memory_unmodelled)}")
        if self.unsupported:
            names = ", ".join(f"{u.name} ({u.type_name})" for u in self.unsupported)
            text += f"\n  NOT COSTED ({len(self.unsupported)}): {names}"
        return text


def category(layer: Layer) -> str:
    """The breakdown category of a layer."""
    if layer.kind in ("fuse_row", "fuse_col"):
        return "fuse_1d"
    if layer.kind == "depthwise":
        return "depthwise"
    if layer.kind == "conv" and layer.kernel_h == 1 and layer.kernel_w == 1:
        return "pointwise"
    return "other"


def _span(kernel: int, dilation: int) -> int:
    """Extent of a dilated kernel in input pixels."""
    return dilation * (kernel - 1) + 1


def _scalesim_out(size: int, kernel: int, stride: int, pad: int, dilation: int) -> int:
    # SCALE-Sim sizes the output of a pre-padded map as ceil((H - R + s) / s), which is one
    # more than PyTorch's floor((H - R) / s) + 1 whenever s does not divide H - R.
    return _ceil_div(size + 2 * pad - _span(kernel, dilation) + stride, stride)


def _scalesim_out_dim(spans, size, kernel, stride, pad, dilation) -> int:
    if spans is None:
        return _scalesim_out(size, kernel, stride, pad, dilation)
    return sum(_scalesim_out(stop - start, kernel, stride, pad, dilation) for start, stop in spans)


class SystolicArray:
    """An X-row by Y-column systolic array of MAC units.

    ``estimate`` costs every conv and linear layer of a network; BatchNorm, activations
    and pooling are free.  ``fuse=True`` models the FuSe array of the paper, on which
    1xK / Kx1 depthwise layers take the row-broadcast mapping; everything else costs
    the same as on the plain array.
    """

    def __init__(self, rows: int, cols: int, *, dataflow: str = "os", fuse: bool = False,
                 convention: str = "fuseconv", memory: MemorySystem | None = None) -> None:
        self.rows = _positive_int("rows", rows)
        self.cols = _positive_int("cols", cols)
        if dataflow not in DATAFLOWS:
            raise ValueError(f"dataflow must be one of {DATAFLOWS}, got {dataflow!r}")
        if convention not in CONVENTIONS:
            raise ValueError(f"convention must be one of {CONVENTIONS}, got {convention!r}")
        if not isinstance(fuse, bool):
            raise TypeError(f"fuse must be a bool, got {type(fuse).__name__}")
        if memory is not None and not isinstance(memory, MemorySystem):
            raise TypeError(f"memory must be a MemorySystem or None, got {type(memory).__name__}")
        self.dataflow = dataflow
        self.convention = convention
        self.fuse = fuse
        self.memory = memory

    def __repr__(self) -> str:
        memory = "" if self.memory is None else f", memory={self.memory!r}"
        return (f"SystolicArray({self.rows}, {self.cols}, dataflow={self.dataflow!r}, fuse={self.fuse}, "
                f"convention={self.convention!r}{memory})")

    # -- the two fold accountings -----------------------------------------------------------------
    def _folded(self, spatial_rows: int, spatial_cols: int, stream: int, preload: bool) -> int:
        """Cycles of a GEMM laid out as ``spatial_rows x spatial_cols`` over the array, with
        ``stream`` values streamed through each fold.  ``preload`` (ws, is) adds the cycles
        that load the stationary operand into the used rows before streaming."""
        x, y = self.rows, self.cols
        if self.convention == "scalesim":
            per_fold = stream + x + y - 2 + (x if preload else 0)
            return _ceil_div(spatial_rows, x) * _ceil_div(spatial_cols, y) * per_fold - 1

        # The paper: full folds, then the partial folds charged by the rows/cols they use.
        def fold(r: int, c: int) -> int:
            return stream + r + c - 1 + (r if preload else 0)

        full_r, rem_r = divmod(spatial_rows, x)
        full_c, rem_c = divmod(spatial_cols, y)
        cycles = full_r * full_c * fold(x, y)
        if rem_r:
            cycles += full_c * fold(rem_r, y)
        if rem_c:
            cycles += full_r * fold(x, rem_c)
        if rem_r and rem_c:
            cycles += fold(rem_r, rem_c)
        return cycles

    def gemm_memory(self, outputs: int, reduction: int, filters: int,
                    geometry: ConvGeometry | None = None) -> MemoryCost:
        """Stalls and DRAM traffic of one GEMM under ``self.memory`` (which must be set).
        The folds last as long as the convention says, so stalls add to its cycles.
        ``geometry`` (the conv behind the GEMM) lets the is ifmap be read by address."""
        if self.memory is None:
            raise ValueError("this array has no memory system (memory=None)")
        for name, value in (("outputs", outputs), ("reduction", reduction), ("filters", filters)):
            _positive_int(name, value)
        x, y = self.rows, self.cols
        preload = self.dataflow != "os"
        stream = {"os": reduction, "ws": outputs, "is": filters}[self.dataflow]
        if self.convention == "scalesim":
            def fold_lines(r: int, c: int) -> int:
                return stream + x + y - 2 + (x if preload else 0)
        else:
            def fold_lines(r: int, c: int) -> int:
                return stream + r + c - 1 + (r if preload else 0)
        return gemm_memory_cost(self.memory, self.dataflow, x, y, outputs, reduction, filters, fold_lines,
                                geometry)

    def gemm_cycles(self, outputs: int, reduction: int, filters: int) -> int:
        """One GEMM: P = ``outputs`` rows of the output, T = ``reduction``, M = ``filters``."""
        for name, value in (("outputs", outputs), ("reduction", reduction), ("filters", filters)):
            _positive_int(name, value)
        if self.dataflow == "os":
            return self._folded(outputs, filters, reduction, preload=False)
        if self.dataflow == "ws":
            return self._folded(reduction, filters, outputs, preload=True)
        return self._folded(reduction, outputs, filters, preload=True)

    def fuse_1d_cycles(self, layer: Layer) -> int:
        """The FuSe array's cycles for a 1xK (fuse_row) or Kx1 (fuse_col) depthwise layer:
        ceil(ceil(N*H*C / X) / s * (Y + K) * ceil(W / Y)), with H the rows processed (the
        unpadded height of a row conv) and W the padded width; swapped for a column conv."""
        if layer.kind == "fuse_row":
            lines = layer.in_h + 2 * layer.pad_h
            length = layer.in_w + 2 * layer.pad_w
            kernel, stride = _span(layer.kernel_w, layer.dilation_w), layer.stride_h
        else:
            lines = layer.in_w + 2 * layer.pad_w
            length = layer.in_h + 2 * layer.pad_h
            kernel, stride = _span(layer.kernel_h, layer.dilation_h), layer.stride_w
        line_folds = _ceil_div(layer.batch * lines * layer.in_channels, self.rows)
        return _ceil_div(line_folds * (self.cols + kernel) * _ceil_div(length, self.cols), stride)

    # -- one layer --------------------------------------------------------------------------------
    def _output_dims(self, layer: Layer) -> tuple[int, int]:
        if self.convention == "scalesim":
            out_h = _scalesim_out_dim(layer.block_rows, layer.in_h, layer.kernel_h, layer.stride_h,
                                      layer.pad_h, layer.dilation_h)
            out_w = _scalesim_out_dim(layer.block_cols, layer.in_w, layer.kernel_w, layer.stride_w,
                                      layer.pad_w, layer.dilation_w)
            return out_h, out_w
        return layer.out_h, layer.out_w

    def _outputs_per_image(self, layer: Layer) -> int:
        out_h, out_w = self._output_dims(layer)
        return out_h * out_w

    def _geometry(self, layer: Layer) -> ConvGeometry | None:
        """The conv behind a layer's (per-group) GEMM, for the memory model's address look-ups;
        None where the im2col ifmap is not one padded map read by a strided (and possibly
        dilated) window: linear layers, which have no duplicates, and block convolutions."""
        if layer.kind == "linear" or layer.block_rows is not None or layer.block_cols is not None:
            return None
        out_h, out_w = self._output_dims(layer)
        return ConvGeometry(layer.in_h + 2 * layer.pad_h, layer.in_w + 2 * layer.pad_w,
                            layer.in_channels // layer.groups, layer.kernel_h, layer.kernel_w,
                            layer.stride_h, layer.stride_w, out_h, out_w, layer.batch,
                            layer.dilation_h, layer.dilation_w)

    def layer_cost(self, layer: Layer) -> LayerCost:
        """Cycles of one layer.  Raises ValueError for a layer with no output."""
        if layer.out_h < 1 or layer.out_w < 1:
            raise ValueError(f"layer {layer.name!r}: the kernel is larger than the padded input "
                             f"({layer.in_h}x{layer.in_w} padded by ({layer.pad_h}, {layer.pad_w}))")
        if layer.in_channels % layer.groups or layer.out_channels % layer.groups:
            raise ValueError(f"layer {layer.name!r}: channels {layer.in_channels}->{layer.out_channels} "
                             f"are not divisible by groups={layer.groups}")
        if self.fuse and layer.kind in ("fuse_row", "fuse_col") and layer.groups == layer.in_channels:
            # A channel multiplier m > 1 runs the mapping m times, once per filter set.
            multiplier = layer.out_channels // layer.in_channels
            cycles, mapping = multiplier * self.fuse_1d_cycles(layer), "fuse_1d"
            mem = None
        else:
            outputs = layer.batch * self._outputs_per_image(layer)
            reduction = (layer.in_channels // layer.groups) * layer.kernel_h * layer.kernel_w
            filters = layer.out_channels // layer.groups
            # A grouped (or depthwise) conv runs one GEMM per group, one after the other.
            cycles = layer.groups * self.gemm_cycles(outputs, reduction, filters)
            mapping = "gemm" if layer.groups == 1 else "per_group_gemm"
            # Each group is a GEMM of its own (as each is a layer of its own in SCALE-Sim).
            mem = (None if self.memory is None
                   else self.gemm_memory(outputs, reduction, filters, self._geometry(layer)) * layer.groups)
        macs = layer.macs
        if self.memory is None:
            return LayerCost(layer.name, layer.kind, category(layer), mapping, macs, cycles,
                             macs / (cycles * self.rows * self.cols))
        if mem is None:
            return LayerCost(layer.name, layer.kind, category(layer), mapping, macs, cycles,
                             macs / (cycles * self.rows * self.cols), memory_note=FUSE_MEMORY_NOTE)
        total = cycles + mem.stall_cycles
        return LayerCost(layer.name, layer.kind, category(layer), mapping, macs, total,
                         macs / (total * self.rows * self.cols), mem.stall_cycles, mem.ifmap_dram_words,
                         mem.filter_dram_words, mem.ofmap_dram_words)

    # -- a network --------------------------------------------------------------------------------
    def estimate(self, model_or_layers: object, input_shape: Sequence[int] | None = None) -> Estimate:
        """Cost a network: an ``nn.Module`` (traced with ``input_shape``, e.g. (1, 3, 224,
        224)), an ONNX file or ``onnx.ModelProto`` (a dynamic batch takes ``input_shape[0]``,
        default 1), or a sequence of :class:`~hwmodel.layers.Layer` (``input_shape`` unused).

        Layers or modules that cannot be costed are listed in ``Estimate.unsupported``.
        """
        layers, unsupported = _as_layers(model_or_layers, input_shape)
        costs, skipped = [], list(unsupported)
        for layer in layers:
            try:
                costs.append(self.layer_cost(layer))
            except ValueError as err:
                skipped.append(Unsupported(layer.name, layer.kind, str(err)))
        return Estimate(self.rows, self.cols, self.dataflow, self.convention, self.fuse, tuple(costs),
                        tuple(skipped), self.memory)


def _as_layers(model_or_layers: object, input_shape) -> tuple[list[Layer], list[Unsupported]]:
    from hwmodel.onnx_reader import is_onnx_source, read_onnx

    if is_onnx_source(model_or_layers):  # before the Iterable test: a path is a str
        read = read_onnx(model_or_layers, batch=input_shape[0] if input_shape else 1)
        return list(read), list(read.unsupported)
    if isinstance(model_or_layers, Iterable) and not _is_module(model_or_layers):
        layers = list(model_or_layers)
        for i, layer in enumerate(layers):
            if not isinstance(layer, Layer):
                raise TypeError(f"model_or_layers[{i}] must be a hwmodel.Layer, got {type(layer).__name__}")
        return layers, list(getattr(model_or_layers, "unsupported", ()))
    if not _is_module(model_or_layers):
        raise TypeError("model_or_layers must be a torch.nn.Module or a sequence of hwmodel.Layer, "
                        f"got {type(model_or_layers).__name__}")
    if input_shape is None:
        raise ValueError("input_shape is required to trace an nn.Module, e.g. (1, 3, 224, 224)")
    from hwmodel.trace import trace

    traced = trace(model_or_layers, input_shape)
    return list(traced), list(traced.unsupported)


def _is_module(obj: object) -> bool:
    # Checked by name first so that costing a layer list never imports torch.
    return any(cls.__name__ == "Module" and cls.__module__.startswith("torch.nn")
               for cls in type(obj).__mro__)


def speedup(baseline_model: object, fuse_model: object, *, array: tuple[int, int] = (64, 64),
            input_shape: Sequence[int] = (1, 3, 224, 224), dataflow: str = "os",
            convention: str = "fuseconv") -> float:
    """Cycles of ``baseline_model`` on the plain array / cycles of ``fuse_model`` on the
    FuSe array.  Either may be an nn.Module or a list of Layers.  Raises ValueError if
    either network has layers the model cannot cost, since the ratio would be wrong."""
    if not (isinstance(array, Sequence) and len(array) == 2):
        raise ValueError(f"array must be a pair (rows, cols), got {array!r}")
    plain = SystolicArray(array[0], array[1], dataflow=dataflow, convention=convention, fuse=False)
    fused = SystolicArray(array[0], array[1], dataflow=dataflow, convention=convention, fuse=True)
    base = plain.estimate(baseline_model, input_shape)
    fuse = fused.estimate(fuse_model, input_shape)
    for label, est in (("baseline_model", base), ("fuse_model", fuse)):
        if est.unsupported:
            names = ", ".join(f"{u.name} ({u.reason})" for u in est.unsupported)
            raise ValueError(f"{label} has layers the systolic model cannot cost: {names}")
    return base.total_cycles / fuse.total_cycles
