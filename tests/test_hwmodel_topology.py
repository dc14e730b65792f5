"""SCALE-Sim topology CSV: reading, writing, round trips and malformed files."""

from __future__ import annotations

import pytest

from hwmodel import Layer, SystolicArray, read_topology, write_topology

HEADER = ("Layer name, IFMAP Height, IFMAP Width, Filter Height, Filter Width, Channels, Num Filter, "
          "Strides,\n")


def _write(tmp_path, body: str, header: str = HEADER):
    path = tmp_path / "topo.csv"
    path.write_text(header + body)
    return path


def test_read_scalesim_rows(tmp_path):
    path = _write(tmp_path, "Conv1, 226, 226, 3, 3, 3, 32, 2,\n"
                            "\n"
                            "Conv2_DP, 114, 114, 3, 3, 32, 1, 1,\n"
                            "row DP, 56, 58, 1, 3, 48, 1, 1,\n"
                            "col DP, 58, 56, 3, 1, 48, 2, 1,\n"
                            "fc, 1, 1, 1, 1, 1280, 1000, 1,\n"
                            "no_trailing_comma, 7, 7, 1, 1, 8, 4, 1\n")
    conv1, dw, row, col, fc, last = read_topology(path)
    assert conv1 == Layer("Conv1", "conv", 1, 3, 226, 226, 32, kernel_h=3, kernel_w=3, stride_h=2, stride_w=2)
    assert conv1.out_h == (226 - 3) // 2 + 1
    assert (dw.kind, dw.in_channels, dw.out_channels, dw.groups) == ("depthwise", 32, 32, 32)
    assert (row.kind, row.kernel_h, row.kernel_w) == ("fuse_row", 1, 3)
    assert (col.kind, col.out_channels, col.groups) == ("fuse_col", 96, 48)  # Num Filter = multiplier
    assert (fc.kind, fc.in_channels, fc.out_channels) == ("conv", 1280, 1000)
    assert last.out_channels == 4
    assert conv1.meta["source"].endswith("topo.csv:2")


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("c, 7, 7, x, 3, 3, 8, 1,\n",
         r"line 2, column 4 \(Filter Height\): expected a positive integer, got 'x'"),
        ("c, 7, 7, 3, 3, 3, 8, 1,\nd, 7, 7, 3, 3, 0, 8, 1,\n",
         r"line 3, column 6 \(Channels\): must be >= 1"),
        ("c, 7, 7, 3, 3, 3, 8,\n", r"line 2: expected 8 columns"),
        ("c, 7, 7, 3, 3, 3, 8, 1, 1:1, 5,\n", r"line 2: expected 8 columns"),
        ("c, 2, 7, 3, 3, 3, 8, 1,\n", r"line 2: filter 3x3 is larger than the \(padded\) IFMAP 2x7"),
        (" , 7, 7, 3, 3, 3, 8, 1,\n", r"line 2, column 1 \(Layer name\): the name is empty"),
        ("c, 7, 7, 3, 3, 3, 8, 1, 2:4,\n", r"line 2, column 9 \(sparsity\): only dense"),
        ("c, 7, 7.5, 3, 3, 3, 8, 1,\n", r"line 2, column 3 \(IFMAP Width\)"),
    ],
)
def test_malformed_rows_name_line_and_column(tmp_path, body, message):
    with pytest.raises(ValueError, match=message):
        read_topology(_write(tmp_path, body))


def test_missing_header_and_empty_file(tmp_path):
    with pytest.raises(ValueError, match="line 1: expected the header"):
        read_topology(_write(tmp_path, "c, 7, 7, 3, 3, 3, 8, 1,\n", header=""))
    with pytest.raises(ValueError, match="the file is empty"):
        read_topology(_write(tmp_path, "", header=""))
    with pytest.raises(FileNotFoundError):
        read_topology(tmp_path / "missing.csv")


def test_dense_sparsity_column_is_accepted(tmp_path):
    (layer,) = read_topology(_write(tmp_path, "c, 7, 7, 3, 3, 3, 8, 1, 1:1,\n"))
    assert layer.out_channels == 8


def test_write_then_read_keeps_the_cycles(tmp_path):
    layers = [
        Layer("conv", "conv", 1, 3, 9, 8, 5, kernel_h=3, kernel_w=3, stride_h=2, stride_w=2, pad_h=1,
              pad_w=1),
        Layer("DPmis,named", "conv", 1, 5, 5, 4, 6),  # "DP" and a comma in a dense layer's name
        Layer("dw", "depthwise", 1, 5, 5, 4, 5, kernel_h=3, kernel_w=3, pad_h=1, pad_w=1, groups=5),
        Layer("row", "fuse_row", 1, 5, 5, 4, 5, kernel_h=1, kernel_w=3, pad_w=1, groups=5),
        Layer("grouped", "conv", 1, 4, 5, 4, 6, kernel_h=3, kernel_w=3, pad_h=1, pad_w=1, groups=2),
        Layer("fc", "linear", 3, 16, 1, 1, 10),
    ]
    path = tmp_path / "out.csv"
    assert write_topology(layers, path) == 7  # the grouped conv is one row per group
    lines = path.read_text().splitlines()
    assert lines[0] == HEADER.strip()
    assert lines[1] == "conv, 11, 10, 3, 3, 3, 5, 2,"  # padding folded into the IFMAP
    assert lines[2].startswith("D_Pmis_named, ")  # not mistaken for depthwise by SCALE-Sim
    assert lines[3] == "DP_dw, 7, 6, 3, 3, 5, 1, 1,"
    assert lines[7] == "fc, 3, 1, 1, 1, 16, 10, 1,"  # batch rows as the IFMAP height
    back = read_topology(path)
    for convention in ("fuseconv", "scalesim"):
        for dataflow in ("os", "ws", "is"):
            for fuse in (False, True):
                array = SystolicArray(4, 3, dataflow=dataflow, convention=convention, fuse=fuse)
                assert array.estimate(back).total_cycles == array.estimate(layers).total_cycles


@pytest.mark.parametrize(
    ("layer", "message"),
    [
        (Layer("b", "conv", 2, 3, 8, 8, 4), "no batch"),
        (Layer("d", "conv", 1, 3, 8, 8, 4, kernel_h=3, kernel_w=3, dilation_h=2, dilation_w=2),
         "no dilation"),
        (Layer("s", "conv", 1, 3, 8, 8, 4, stride_h=2, stride_w=1), "one stride"),
        (Layer("blk", "conv", 1, 3, 8, 8, 4, block_rows=((0, 4), (4, 8))), "block convolution"),
    ],
)
def test_write_rejects_what_a_row_cannot_hold(tmp_path, layer, message):
    with pytest.raises(ValueError, match=message):
        write_topology([layer], tmp_path / "x.csv")


def test_write_rejects_non_layers(tmp_path):
    with pytest.raises(TypeError, match="hwmodel.Layer"):
        write_topology([("conv", 3, 3)], tmp_path / "x.csv")


# -- the edges of the format ------------------------------------------------------------------------


def test_messages_name_the_file_and_the_columns(tmp_path):
    path = _write(tmp_path, "c, 7, 7, 3, 3, 3, 8,\n")
    with pytest.raises(ValueError) as err:
        read_topology(path)
    assert str(err.value) == (f"{path}: line 2: expected 8 columns (Layer name, IFMAP Height, IFMAP Width, "
                              "Filter Height, Filter Width, Channels, Num Filter, Strides) and an optional "
                              "sparsity ratio, got 7: 'c, 7, 7, 3, 3, 3, 8'")
    path = _write(tmp_path, "c, 7, 0, 3, 3, 3, 8, 1,\n")
    with pytest.raises(ValueError, match=r"^" + str(path).replace("\\", "\\\\") + r": line 2, column 3"):
        read_topology(path)


@pytest.mark.parametrize("sparsity", [" 1 : 1 ", " "])
def test_dense_sparsity_with_spaces_or_blank_is_accepted(tmp_path, sparsity):
    (layer,) = read_topology(_write(tmp_path, f"c, 7, 7, 3, 3, 3, 8, 1,{sparsity},\n"))
    assert layer.out_channels == 8


@pytest.mark.parametrize(
    ("filter_hw", "channels", "kind", "groups"),
    [
        ((1, 2), 4, "fuse_row", 4),  # the shortest 1-D kernels are still 1-D
        ((2, 1), 4, "fuse_col", 4),
        ((1, 1), 4, "depthwise", 4),  # a 1x1 depthwise conv is neither a row nor a column conv
        ((3, 3), 1, "conv", 1),  # one channel: an ordinary conv with "Num Filter" filters
        ((1, 3), 1, "conv", 1),
    ],
)
def test_depthwise_rows_by_kernel_shape(tmp_path, filter_hw, channels, kind, groups):
    kh, kw = filter_hw
    (layer,) = read_topology(_write(tmp_path, f"x_DP, 6, 6, {kh}, {kw}, {channels}, 2, 1,\n"))
    assert (layer.kind, layer.in_channels, layer.out_channels, layer.groups) == (kind, channels, 2 * channels, groups)


def test_written_names_and_depthwise_markers(tmp_path):
    layers = [
        Layer("  ", "conv", 1, 2, 4, 4, 3),  # a blank name
        Layer(" ", "depthwise", 1, 2, 4, 4, 2, kernel_h=3, kernel_w=3, groups=2),
        Layer("x_DP", "depthwise", 1, 2, 4, 4, 2, kernel_h=3, kernel_w=3, groups=2),  # already marked
        Layer("dp", "depthwise", 1, 2, 4, 4, 2, kernel_h=3, kernel_w=3, groups=2),  # lower case is no marker
        Layer("one", "conv", 1, 1, 4, 4, 3),  # one channel, groups 1: not depthwise
    ]
    path = tmp_path / "names.csv"
    assert write_topology(layers, path) == 5
    assert path.read_text(encoding="utf-8").splitlines()[1:] == [
        "layer, 4, 4, 1, 1, 2, 3, 1,",
        "DP_layer, 4, 4, 3, 3, 2, 1, 1,",
        "x_DP, 4, 4, 3, 3, 2, 1, 1,",
        "DP_dp, 4, 4, 3, 3, 2, 1, 1,",
        "one, 4, 4, 1, 1, 1, 3, 1,",
    ]


def test_write_rejects_dilation_on_one_axis_and_names_the_bad_type(tmp_path):
    with pytest.raises(ValueError, match="no dilation"):
        write_topology([Layer("d", "conv", 1, 3, 8, 8, 4, kernel_h=3, kernel_w=3, dilation_h=2)], tmp_path / "x.csv")
    with pytest.raises(ValueError, match="no dilation"):
        write_topology([Layer("d", "conv", 1, 3, 8, 8, 4, kernel_h=3, kernel_w=3, dilation_w=2)], tmp_path / "x.csv")
    with pytest.raises(TypeError, match="layers must hold hwmodel.Layer, got tuple"):
        write_topology([("conv", 3, 3)], tmp_path / "x.csv")


def test_header_messages_in_full(tmp_path):
    header = ("Layer name, IFMAP Height, IFMAP Width, Filter Height, Filter Width, Channels, Num Filter, "
              "Strides,")
    long_line = "x" * 100
    path = _write(tmp_path, "", header=long_line + "\n")
    with pytest.raises(ValueError) as err:
        read_topology(path)
    # The offending line is quoted up to 80 characters.
    assert str(err.value) == f"{path}: line 1: expected the header '{header}', got {'x' * 80!r}"
    path = _write(tmp_path, "\n\n", header="")
    with pytest.raises(ValueError) as err:
        read_topology(path)
    assert str(err.value) == f"{path}: the file is empty; expected the header '{header}'"
