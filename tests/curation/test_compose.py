"""Camera composition, frame encoding, and one episode row through every per-row stage."""

from __future__ import annotations

import io

import numpy as np
import pyarrow as pa
import pytest
from PIL import Image

from curation.config import CurationConfig, FilterConfig, VideoConfig, WindowConfig
from curation.episode_samples import RAW_SCHEMA, episode_sample_rows
from curation.phases.pack import normalise_raw_table
from curation.shards import SAMPLE_METADATA
from curation.stages.filters import check_episode
from curation.stages.stats import compute_stats
from curation.stages.windowing import window_episode
from schemas import Sample, from_table, to_table, validate_sample_table
from schemas.compose import compose_views, resize_frames, slot_roles
from schemas.frames import decode_sample_frames, encode_sample_frames
from tests.curation.test_windowing import make_episode


def solid(color, n=2, h=30, w=40) -> np.ndarray:
    return np.broadcast_to(np.asarray(color, np.uint8), (n, h, w, 3)).copy()


RED, GREEN, BLUE = (255, 0, 0), (0, 255, 0), (0, 0, 255)


def test_paper_layout():
    out = compose_views(
        {"high": solid(RED), "left_wrist": solid(GREEN), "right_wrist": solid(BLUE)}, 160, 128
    )
    assert out.shape == (2, 128, 160, 3)
    assert (out[:, :64] == RED).all()
    assert (out[:, 64:, :80] == GREEN).all()
    assert (out[:, 64:, 80:] == BLUE).all()


def test_single_wrist_goes_left_and_missing_views_are_black():
    out = compose_views({"high": solid(RED), "wrist": solid(GREEN)}, 64, 64)
    assert (out[:, :32] == RED).all() and (out[:, 32:, :32] == GREEN).all()
    assert (out[:, 32:, 32:] == 0).all()
    no_high = compose_views({"right_wrist": solid(BLUE)}, 64, 64)
    assert (no_high[:, :32] == 0).all() and (no_high[:, 32:, 32:] == BLUE).all()
    assert slot_roles(["side", "wrist"]) == {"top": "side", "left": "wrist", "right": None}
    with pytest.raises(ValueError, match="different frame counts"):
        compose_views({"high": solid(RED, n=2), "wrist": solid(GREEN, n=3)}, 64, 64)
    with pytest.raises(ValueError, match="no view fits a slot"):
        compose_views({"low_res_thermal": solid(RED)}, 64, 64)


def test_resize_is_antialiased_and_pad_keeps_aspect():
    checker = (np.indices((64, 64)).sum(0) % 2 * 255).astype(np.uint8)
    frames = np.repeat(checker[None, :, :, None], 3, axis=3)
    small = resize_frames(frames, 16, 16)
    assert abs(float(small.mean()) - 127.5) < 3 and small.std() < 6  # averaged, not aliased to 0/255
    padded = resize_frames(solid(RED, n=1, h=20, w=40), 40, 40, fit="pad")  # 2:1 into a square
    assert (padded[0, 10:30] == RED).all()
    assert (padded[0, :10] == 0).all() and (padded[0, 30:] == 0).all()


def test_png_is_exact_and_self_describing():
    frames = np.random.default_rng(0).integers(0, 256, (5, 24, 32, 3), dtype=np.uint8)
    data = encode_sample_frames(frames, "png")
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    np.testing.assert_array_equal(decode_sample_frames(data, "png"), frames)
    plain = Image.fromarray(frames.reshape(-1, 32, 3))
    buf = io.BytesIO()
    plain.save(buf, format="PNG")
    with pytest.raises(ValueError, match="no 'gwp_frames' text chunk"):
        decode_sample_frames(buf.getvalue(), "png")
    with pytest.raises(ValueError, match="unknown frame format"):
        encode_sample_frames(frames, "gif")


def test_mp4_round_trip_is_close():
    frames = np.repeat(compose_views({"high": solid(RED, 5), "wrist": solid(GREEN, 5)}, 64, 64), 1, axis=0)
    frames[:, 20:40, 20:40] = np.arange(5, dtype=np.uint8)[:, None, None, None] * 40
    back = decode_sample_frames(encode_sample_frames(frames, "mp4", fps=5.0), "mp4")
    assert back.shape == frames.shape
    mse = np.mean((back.astype(float) - frames.astype(float)) ** 2)
    assert 10 * np.log10(255**2 / max(mse, 1e-9)) > 30  # PSNR


@pytest.mark.parametrize("fmt", ["png", "mp4"])
def test_one_episode_through_every_stage(fmt):
    """The job's path for one episode, in one process: filters → windows → composed, encoded
    frames (raw rows, as a work part holds them) → normalised, validated Sample rows (as the
    shard phase writes them)."""
    cfg = CurationConfig(
        filters=FilterConfig(min_steps=8),
        windows=WindowConfig(chunk=8, frame_stride=2, num_future=2, stride=8),
        video=VideoConfig(width=64, height=64, format=fmt),
    )
    eps = [make_episode(40, "agilex_dual_arm", seed=s) for s in range(2)]
    stats = compute_stats(eps, cfg.windows)
    ep = eps[0]

    verdict = check_episode(ep, cfg.filters)
    assert verdict.rejection is None
    rows, rejections, candidates = episode_sample_rows(ep, cfg, verdict.quality)
    assert len(rows) == 5 and candidates == 5 and rejections == []
    table = validate_sample_table(normalise_raw_table(pa.Table.from_pylist(rows, schema=RAW_SCHEMA), stats))
    samples = from_table(Sample, table.replace_schema_metadata(SAMPLE_METADATA))

    for s, w in zip(samples, window_episode(ep, cfg.windows).windows, strict=True):
        assert s.sample_id == w.sample_id and s.embodiment_id == 1 and (s.height, s.width) == (64, 64)
        assert set(s.quality) == {"motion", "brightness", "sharpness"}
        frames = decode_sample_frames(s.video, s.video_format)
        assert frames.shape == (3, 64, 64, 3)
        # the top half is the high camera at those frames, resized
        want = compose_views({r: ep.cameras[r].array[list(w.frame_indices)] for r in ep.cameras}, 64, 64)
        if fmt == "png":
            np.testing.assert_array_equal(frames, want)
        else:
            assert np.abs(frames.astype(int) - want.astype(int)).mean() < 12
    assert to_table(samples).equals(table)  # the rows round-trip through the Sample record


def test_stacked_png_from_cached_rows_equals_encoding_the_window():
    from PIL import Image

    from schemas.frames import png_rows, stack_png

    frames = np.random.default_rng(3).integers(0, 255, (6, 20, 30, 3), dtype=np.uint8)
    cache = [png_rows(f) for f in frames]
    window = [0, 2, 4]
    data = stack_png([cache[i] for i in window])
    assert data == encode_sample_frames(frames[window], "png")  # the same bytes, however they were made
    np.testing.assert_array_equal(decode_sample_frames(data, "png"), frames[window])
    with Image.open(io.BytesIO(data)) as im:  # a standard PNG to any reader
        im.load()
        assert im.size == (30, 60) and im.text["gwp_frames"] == "3"


def test_the_episode_stage_composes_only_the_frames_its_windows_use(monkeypatch):
    """Every Δ-th frame at stride Δ is all the windows need: only those are resized, and each
    sample's frames are exactly those of composing every frame and picking its indices."""
    import curation.episode_samples as es
    from curation.config import get_preset
    from curation.stages.windowing import window_episode
    from schemas.frames import decode_sample_frames
    from tests.support.helpers import frames_of, make_episodes

    cfg = get_preset("default")
    (ep,) = make_episodes([60], size=64)
    composed = []
    real = es.compose_views
    monkeypatch.setattr(
        es, "compose_views", lambda views, *a: composed.append(real(views, *a)) or composed[-1]
    )
    rows, _, _ = es.episode_sample_rows(ep, cfg, {})
    used = {i for w in window_episode(ep, cfg.windows, {}).windows for i in w.camera_indices}
    assert composed[0].shape[0] == len(used) < ep.length
    vc = cfg.video
    every = real(frames_of(ep), vc.width, vc.height, vc.fit)
    windows = window_episode(ep, cfg.windows, {}).windows
    for row, w in zip(rows, windows, strict=True):
        np.testing.assert_array_equal(
            decode_sample_frames(row["video"], row["video_format"]), every[list(w.camera_indices)]
        )


def test_png_rows_use_the_up_filter_frame_by_frame():
    """Every frame's first row is unfiltered (the row above it in a stack is another frame's),
    the others are Up-filtered, which deflates a smooth frame far smaller than plain rows."""
    import zlib

    from schemas.frames import png_rows, stack_png

    ramp = np.add.outer(np.arange(32), np.arange(40)).astype(np.uint8)  # smooth, like a camera
    frames = np.stack([np.repeat(ramp[:, :, None] + k, 3, axis=2) for k in range(3)])
    rows = [png_rows(f) for f in frames]
    data = stack_png(rows)
    np.testing.assert_array_equal(decode_sample_frames(data, "png"), frames)
    stride = 1 + 40 * 3
    raw = zlib.decompress(data[data.index(b"IDAT") + 4 :][:-16])  # IDAT body up to its CRC and IEND
    filters = [raw[i * stride] for i in range(3 * 32)]
    assert filters == ([0] + [2] * 31) * 3
    plain = zlib.compress(
        np.concatenate([np.zeros((32, 1), np.uint8), frames[0].reshape(32, -1)], axis=1).tobytes(), 1
    )
    assert len(rows[0].deflated) < len(plain) / 2
