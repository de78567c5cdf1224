"""The ``paper`` curation preset stores sample frames without loss: what training reads back is
what the camera gave, the frames inference sees (issue 17). H.264 in yuv420p measured 34-37 dB
PSNR at any CRF on Meta-World renders at this size (benchmarks/paper_frames.py), so a preset
made lossy again fails here on the first frame."""

from __future__ import annotations

import numpy as np

from curation.config import get_preset
from schemas.frames import decode_sample_frames, encode_sample_frames
from tests.support.helpers import smooth_frames


def test_paper_preset_frames_round_trip_exactly():
    v, w = get_preset("paper").video, get_preset("paper").windows
    rng = np.random.default_rng(0)
    frames = smooth_frames(w.num_future + 1, 3.0, v.height, v.width)
    # thin saturated edges and noise: what chroma subsampling and quantisation lose first
    frames[:, ::7, :, 0] = 255
    frames[:, :, ::5, 2] = 0
    frames[:, -40:, -40:] = rng.integers(0, 256, (w.num_future + 1, 40, 40, 3), dtype=np.uint8)
    data = encode_sample_frames(frames, v.format, fps=80.0 / w.frame_stride, codec=v.codec, crf=v.crf)
    back = decode_sample_frames(data, v.format)
    assert back.shape == frames.shape == (w.num_future + 1, 320, 384, 3)
    np.testing.assert_array_equal(back, frames)
