"""Synthetic :class:`~schemas.Sample` rows for the tests of the shard readers and writers.

:func:`window_sample` builds the row of one window the way curation lays it out: ``1 + num_future``
frames every ``stride`` frames from ``start``, the sample id of that geometry, and a d-dim action
chunk ``[P, d]`` and state ``[d]`` zero-padded to ``MAX_DIM`` with their validity mask. The tests
set what they check (video, sizes, source, instruction, ...) by keyword.

:func:`tall_png` is the shard's PNG frame format written independently of the code under test
(with PIL), so that a reader's decoder is checked against a second implementation.
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np
from PIL import Image, PngImagePlugin

from schemas import MAX_DIM, Sample, sample_id_for, window_geometry
from schemas.frames import PNG_FRAMES_KEY


def tall_png(frames_THWC: np.ndarray) -> bytes:
    """One tall PNG of uint8 ``[T, H, W, 3]`` frames, T in its ``gwp_frames`` text chunk."""
    info = PngImagePlugin.PngInfo()
    info.add_text(PNG_FRAMES_KEY, str(len(frames_THWC)))
    buf = io.BytesIO()
    Image.fromarray(frames_THWC.reshape(-1, frames_THWC.shape[2], 3)).save(buf, format="PNG", pnginfo=info)
    return buf.getvalue()


def window_sample(
    episode_id: str,
    start: int,
    *,
    action_Pd: np.ndarray,
    state_d: np.ndarray,
    num_future: int,
    stride: int = 1,
    **fields: Any,
) -> Sample:
    """The row of the window at ``start``; ``fields`` gives video, height and width, and may
    override the defaults (a ``metaworld_sawyer`` test sample with no instruction, PNG frames)."""
    P, d = action_Pd.shape
    mask_D = np.arange(MAX_DIM) < d
    action_PD = np.zeros((P, MAX_DIM), dtype=np.float32)
    action_PD[:, :d] = action_Pd
    state_D = np.zeros(MAX_DIM, dtype=np.float32)
    state_D[:d] = state_d
    defaults = {
        "source": "test",
        "embodiment": "metaworld_sawyer",
        "embodiment_id": 0,
        "instruction": "",
        "caption": "",
        "video_format": "png",
    }
    return Sample(
        sample_id=sample_id_for(episode_id, start, window_geometry(P, stride, num_future)),
        episode_id=episode_id,
        start_frame=start,
        frame_indices=tuple(start + stride * k for k in range(1 + num_future)),
        action=action_PD,
        action_mask=mask_D,
        state=state_D,
        state_mask=mask_D.copy(),
        **(defaults | fields),
    )
