"""The cuDNN GRU layout that torch, paddle and mindspore share (NumPy only; each backend's
tests check it against the framework's real layer)."""

import numpy as np
import pytest

from d2lgru import GATES, GRUSpec
from d2lgru.backends import _cudnn_layout as layout
from helpers import random_params


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_round_trip_is_bit_exact_and_names_every_cell(dtype):
    spec = GRUSpec(3, 5, num_layers=2, bidirectional=True, reset_after=True)
    params = random_params(spec, dtype)
    native = layout.to_native(params)
    assert {k: v.shape for k, v in native.items()} == layout.shapes(spec)
    assert "weight_hh_l1_reverse" in native and all(v.dtype == dtype for v in native.values())
    assert layout.from_native(native, spec, "x.GRU") == params


def test_row_blocks_are_r_z_n():
    spec = GRUSpec(2, 3, reset_after=True)
    params = random_params(spec)
    cell, native = params.cell(0), layout.to_native(params)
    for k, gate in enumerate("rzh"):
        rows = slice(3 * k, 3 * k + 3)
        g = GATES.index(gate)
        np.testing.assert_array_equal(native["weight_ih_l0"][rows], cell.W_x[g].T)
        np.testing.assert_array_equal(native["weight_hh_l0"][rows], cell.W_h[g].T)
        np.testing.assert_array_equal(native["bias_hh_l0"][rows], cell.b_h[g])


def test_errors_name_the_layer_and_the_array():
    spec = GRUSpec(3, 4, reset_after=True)
    native = layout.to_native(random_params(spec))
    with pytest.raises(ValueError, match="torch.nn.GRU parameters for a .* lack 'bias_hh_l0'"):
        layout.from_native({k: v for k, v in native.items() if k != "bias_hh_l0"}, spec,
                           "torch.nn.GRU")
    with pytest.raises(ValueError, match="have unknown 'weight_ih_l1'"):
        layout.from_native({**native, "weight_ih_l1": native["weight_ih_l0"]}, spec, "x")
    with pytest.raises(ValueError, match=r"weight_ih_l0 must have shape \(12, 3\) .*, got \(3, 12\)"):
        layout.from_native({**native, "weight_ih_l0": np.zeros((3, 12))}, spec, "x")
