"""Pixel conversion details the reliability table does not show: errors, mapping checks, round trips.

The end-to-end cases (every dtype/shape through a reader, the ledger, the counts) are in
``tests/curation/test_reliability_pixels.py``; these pin the smaller contracts around them.
"""

from __future__ import annotations

import io

import numpy as np
import pyarrow as pa
import pytest

from curation.config import FilterConfig
from curation.formats.hdf5_aloha import AlohaReader, write_aloha_hdf5
from curation.formats.mapping import SourceMapping
from curation.frames import decode_frames, to_rgb8
from curation.stages.filters import check_episode
from schemas import Episode, FrameRef, SchemaError
from schemas.errors import ConfigError, LoadError
from tests.curation.test_windowing import make_episode, make_frames
from tests.support.helpers import make_episodes


def _frames(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (3, 8, 8, 3), dtype=np.uint8)


@pytest.mark.parametrize(
    "frames, reason, fragment",
    [
        (np.full((2, 4, 4, 3), np.nan, np.float32), "bad_pixel_range", "NaN or inf"),
        (
            np.full((2, 4, 4, 3), 0.5, np.float16) * np.array([1, 1, 3], np.float16),
            "bad_pixel_range",
            "[0.5, 1.5]",
        ),
        (np.zeros((2, 4, 4, 3), np.int32), "bad_pixel_dtype", "int32"),
        (np.zeros((2, 4, 4, 3), bool), "bad_pixel_dtype", "bool"),
        (np.zeros((2, 4, 4, 5), np.uint8), "bad_frames", "(2, 4, 4, 5)"),
        (np.zeros((4, 4), np.uint8), "bad_frames", "(4, 4)"),
    ],
)
def test_unsupported_pixels_are_refused_naming_file_dtype_and_shape(frames, reason, fragment):
    with pytest.raises(LoadError) as info:
        to_rgb8(frames, "cam.h5")
    assert (info.value.reason, info.value.path) == (reason, "cam.h5")
    assert fragment in info.value.detail


def test_declared_range_maps_linearly_and_overrides_the_dtype_rule():
    signed = np.array([-128, 0, 127], np.int8).reshape(1, 1, 3, 1)
    out = to_rgb8(signed, "x", pixel_range=(-128, 127))
    assert out[0, 0, :, 0].tolist() == [0, 128, 255]
    with pytest.raises(LoadError, match="outside the declared pixel_range"):
        to_rgb8(signed, "x", pixel_range=(-100, 127))


def test_bgra_drops_alpha_and_reverses_the_colours():
    rgb = _frames()
    bgra = np.concatenate([rgb[..., ::-1], np.zeros_like(rgb[..., :1])], -1)
    assert np.array_equal(to_rgb8(bgra, "x", "bgr"), rgb)


def test_png_mode_i_beyond_16_bits_is_refused():
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.full((4, 4), 70000, np.int32), mode="I").save(buf, format="TIFF")
    ref = FrameRef(kind="encoded", path="shard-0", key="steps/observation/image", encoded=(buf.getvalue(),))
    with pytest.raises(LoadError) as info:
        decode_frames(ref)
    assert (
        info.value.reason == "bad_pixel_range" and "frame 0 of steps/observation/image" in info.value.detail
    )


@pytest.mark.parametrize(
    "extra, field",
    [
        ({"channel_order": {"cam": "brg"}}, "extra.channel_order[cam]"),
        ({"channel_order": {"other": "bgr"}}, "extra.channel_order[other]"),
        ({"channel_order": "bgr"}, "extra.channel_order"),
        ({"pixel_range": {"cam": [10, 2]}}, "extra.pixel_range[cam]"),
        ({"pixel_range": {"cam": [0]}}, "extra.pixel_range[cam]"),
        ({"pixel_range": {"other": [0, 1]}}, "extra.pixel_range[other]"),
    ],
)
def test_mapping_rejects_bad_channel_order_and_pixel_range(extra, field):
    with pytest.raises(SchemaError) as info:
        SourceMapping.from_dict(
            {"embodiment": "metaworld_sawyer", "cameras": {"cam": "high"}, "extra": extra}
        )
    assert info.value.field == field


def test_frame_ref_channel_order_and_range_survive_arrow():
    ep = make_episodes((5,), size=8)[0]
    ref = FrameRef(kind="hdf5", path="f.h5", key="k", stop=5, channel_order="bgr", pixel_range=(0.0, 4095.0))
    ep = ep.with_(cameras={"high": ref})
    table = pa.Table.from_pylist([ep.to_row()], schema=Episode.arrow_schema())
    back = Episode.from_row(table.to_pylist()[0]).cameras["high"]
    assert (back.channel_order, back.pixel_range) == ("bgr", (0.0, 4095.0))
    with pytest.raises(SchemaError, match="channel_order"):
        FrameRef(kind="hdf5", path="f.h5", key="k", stop=5, channel_order="gbr").validate()


def test_aloha_jpeg_written_by_opencv_reads_right_with_channel_order_bgr(tmp_path):
    """ALOHA's recorder JPEG-encodes RGB arrays through OpenCV, which takes them for BGR."""
    ep = make_episodes((6,), size=32)[0]
    ep = ep.with_(cameras={"high": ep.cameras["high"]})
    rgb = ep.cameras["high"].array
    swapped = ep.with_(
        cameras={"high": FrameRef(kind="inline", array=np.ascontiguousarray(rgb[..., ::-1]), fps=ep.fps)}
    )
    root = write_aloha_hdf5([swapped], tmp_path / "aloha", compress=True)
    plain = SourceMapping.for_source(root, "hdf5_aloha")
    bgr = SourceMapping.from_dict({**plain.to_dict(), "extra": {"channel_order": {"cam_high": "bgr"}}})

    def psnr(reader: AlohaReader) -> float:
        got = decode_frames(reader.load(reader.list_episodes()[0]).cameras["high"]).astype(np.float64)
        return float(10 * np.log10(255**2 / np.mean((got - rgb) ** 2)))

    assert psnr(AlohaReader(root, mapping=bgr)) > 30.0
    assert psnr(AlohaReader(root, mapping=plain)) < 25.0


def test_exposure_config_and_check():
    with pytest.raises(ConfigError, match="saturated_level"):
        FilterConfig(black_level=200, saturated_level=100)
    with pytest.raises(ConfigError, match="max_overexposed_fraction"):
        FilterConfig(max_overexposed_fraction=0.0)
    frames = make_frames(40)
    frames[:, :30] = 255  # 30 of 48 rows: 62.5 % saturated
    ep = make_episode(40, frames={"high": frames})
    cfg = FilterConfig(enabled=("exposure",))
    rej = check_episode(ep, cfg).rejection
    assert (rej.stage, rej.reason) == ("filter.exposure", "overexposed")
    assert rej.detail.startswith("0.6")
    assert (
        check_episode(ep, FilterConfig(enabled=("exposure",), max_overexposed_fraction=0.7)).rejection is None
    )
    assert check_episode(make_episode(40), cfg).rejection is None
