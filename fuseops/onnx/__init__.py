"""Export FuSe and block networks to standard ONNX (default domain only).

``export`` wraps ``torch.onnx.export`` (the dynamo exporter) and translates both ops into
standard operators (:mod:`fuseops.onnx.translations`), so the file runs in any ONNX
runtime and feeds hardware toolchains; ``translation_table()`` is for callers who run
``torch.onnx.export`` themselves.  Needs the ``onnx`` extra: ``pip install fuseops[onnx]``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

DEFAULT_OPSET = 18


def _require() -> None:
    try:
        import onnx  # noqa: F401
        import onnxscript  # noqa: F401
    except ImportError as error:
        raise ImportError(f"fuseops.onnx needs onnx and onnxscript ({error.name} is missing): "
                          "pip install 'fuseops[onnx]'") from None


def translation_table() -> dict[Any, Callable]:
    """{torch op overload: ONNX translation} for ``torch.onnx.export(custom_translation_table=...)``."""
    _require()
    import fuseops  # noqa: F401  (registers both ops)
    from fuseops.onnx import translations

    return {torch.ops.fuseops.fuse_conv2d.default: translations.fuse_conv2d,
            torch.ops.fuseops.block_conv2d.default: translations.block_conv2d}


def _check_export_args(model: object, args: object, path: object, opset: object, dynamic_batch: object) -> tuple:
    """export's arguments, checked in one place; returns ``args`` as a tuple."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if isinstance(args, torch.Tensor):
        args = (args,)
    elif isinstance(args, Sequence) and not isinstance(args, str | bytes):
        args = tuple(args)
    else:
        raise TypeError(f"args must be a tensor or a tuple of the model's inputs, got {type(args).__name__}")
    if not args:
        raise ValueError("args must hold at least one example input, got an empty sequence")
    if not isinstance(path, str | os.PathLike):
        raise TypeError(f"path must be a str or os.PathLike, got {type(path).__name__}")
    folder = os.path.dirname(os.path.abspath(os.fspath(path)))
    if not os.path.isdir(folder):
        raise ValueError(f"path's folder {folder!r} does not exist")
    if opset is not None and (isinstance(opset, bool) or not isinstance(opset, int)):
        raise TypeError(f"opset must be an int (e.g. {DEFAULT_OPSET}) or None, got {type(opset).__name__}")
    if opset is not None and opset < 1:
        raise ValueError(f"opset must be >= 1, got {opset}")
    if not isinstance(dynamic_batch, bool):
        raise TypeError(f"dynamic_batch must be a bool, got {type(dynamic_batch).__name__}")
    return args


def export(model: nn.Module, args: torch.Tensor | Sequence[Any], path: str | os.PathLike[str], *,
           opset: int | None = None, dynamic_batch: bool = True, **kwargs: Any):
    """Export ``model`` called on ``args`` to an ONNX file of standard operators.

    Args:
        model: a network (put it in eval mode first for inference: training-mode
            BatchNorm exports as training-mode BatchNorm).
        args: the example input(s): a tensor or a tuple of them.  With ``dynamic_batch``
            use a batch of at least 2, so that the exporter does not specialise it to 1.
        path: the .onnx file to write.
        opset: the ONNX opset (default 18).
        dynamic_batch: leave dimension 0 of every tensor input free.
        **kwargs: passed to ``torch.onnx.export`` (``input_names``, ``external_data``, ...);
            a ``custom_translation_table`` given here extends fuseops'.

    Returns:
        The ``torch.onnx.ONNXProgram``.

    Raises:
        TypeError / ValueError: an argument of the wrong type or value, named in the message,
            before anything is traced.
        ValueError: the graph still holds a node outside the default ONNX domain.
    """
    args = _check_export_args(model, args, path, opset, dynamic_batch)
    table = {**translation_table(), **kwargs.pop("custom_translation_table", {})}
    if dynamic_batch and "dynamic_shapes" not in kwargs:
        batch = torch.export.Dim("batch")
        kwargs["dynamic_shapes"] = tuple({0: batch} if isinstance(a, torch.Tensor) else None for a in args)
    kwargs.setdefault("verbose", False)
    program = torch.onnx.export(model, args, dynamo=True, opset_version=opset or DEFAULT_OPSET,
                                custom_translation_table=table, **kwargs)
    foreign = sorted({f"{node.domain}::{node.op_type}" for node in program.model_proto.graph.node
                      if node.domain not in ("", "ai.onnx")})
    if foreign:
        raise ValueError(f"the exported graph holds operators outside the default ONNX domain: {foreign}")
    program.save(os.fspath(path))
    return program
