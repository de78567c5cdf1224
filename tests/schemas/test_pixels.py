"""Pixel scaling (schemas/pixels.py) and its torch twin (pretrain/pixels.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pretrain.pixels import tensor_to_uint8, tensor_to_unit_range
from schemas.pixels import to_uint8, to_unit_range


def test_every_uint8_value_round_trips_and_the_ends_map_to_the_range_ends():
    p = np.arange(256, dtype=np.uint8).reshape(16, 16)
    x = to_unit_range(p)
    assert x.dtype == np.float32 and x.shape == p.shape
    assert x[0, 0] == -1.0 and x[-1, -1] == 1.0 and np.all(np.diff(x.ravel()) > 0)
    np.testing.assert_array_equal(to_uint8(x), p)


def test_values_outside_the_range_are_clipped_on_the_way_back():
    np.testing.assert_array_equal(to_uint8(np.array([-3.0, -1.0, 0.0, 1.0, 7.5])), [0, 0, 128, 255, 255])


def test_numpy_and_torch_give_the_same_bits():
    rng = np.random.default_rng(0)
    p = rng.integers(0, 256, (2, 3, 5, 7), dtype=np.uint8)
    t = tensor_to_unit_range(torch.from_numpy(p))
    assert t.dtype == torch.float32
    np.testing.assert_array_equal(t.numpy().view(np.uint32), to_unit_range(p).view(np.uint32))
    # what the loader and the model wrote before these helpers existed
    np.testing.assert_array_equal(t.numpy(), (torch.from_numpy(p).float() / 127.5 - 1).numpy())
    x = rng.uniform(-1.2, 1.2, (4, 9)).astype(np.float32)
    np.testing.assert_array_equal(tensor_to_uint8(torch.from_numpy(x)).numpy(), to_uint8(x))


def test_the_input_is_left_alone_and_non_uint8_is_refused():
    p = torch.arange(10, dtype=torch.uint8)
    tensor_to_unit_range(p)
    assert p.tolist() == list(range(10))
    with pytest.raises(ValueError, match="uint8"):
        to_unit_range(np.zeros(3, np.float32))
    with pytest.raises(ValueError, match="uint8"):
        tensor_to_unit_range(torch.zeros(3))
