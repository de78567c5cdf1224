"""Windowing (1:N) with its accounting, and the curation config."""

from __future__ import annotations

import json

import numpy as np
import pytest

from curation.config import (
    CurationConfig,
    WindowConfig,
    get_preset,
    list_presets,
    load_config,
    preset_with_overrides,
)
from curation.stages.windowing import (
    plan_windows,
    window_episode,
    windows,
)
from schemas import Episode, FrameRef, episode_id_for, get_embodiment, sample_id_for, window_geometry
from schemas.errors import ConfigError


def make_frames(t: int, seed: int = 0, h: int = 48, w: int = 64, shift: int = 2) -> np.ndarray:
    """uint8 [t, h, w, 3]: a sharp blocky random texture sliding ``shift`` px per frame."""
    rng = np.random.default_rng(seed)
    blocks = rng.integers(40, 230, size=(h // 8 + 1, (w + shift * t) // 8 + 2, 3), dtype=np.uint8)
    tex = np.repeat(np.repeat(blocks, 8, axis=0), 8, axis=1)[:h]
    return np.stack([tex[:, i * shift : i * shift + w] for i in range(t)])


def make_episode(
    t: int = 40,
    embodiment: str = "metaworld_sawyer",
    seed: int = 0,
    index: int | None = None,
    frames: dict[str, np.ndarray] | None = None,
    fps: float = 20.0,
    with_cameras: bool = True,
) -> Episode:
    """A small smooth episode with inline camera frames (every role of the embodiment)."""
    spec = get_embodiment(embodiment)
    rng = np.random.default_rng(seed)
    steps = np.arange(t)[:, None]
    phase_s = rng.uniform(0, 2 * np.pi, spec.state_dim)
    phase_a = rng.uniform(0, 2 * np.pi, spec.action_dim)
    state = (np.sin(steps / 7 + phase_s) + 0.05 * rng.standard_normal((t, spec.state_dim))).astype(np.float32)
    action = (np.cos(steps / 5 + phase_a) + 0.05 * rng.standard_normal((t, spec.action_dim))).astype(
        np.float32
    )
    if frames is None and with_cameras:
        frames = {role: make_frames(t, seed * 10 + i) for i, role in enumerate(spec.cameras)}
    cameras = {role: FrameRef(kind="inline", array=arr, fps=fps) for role, arr in (frames or {}).items()}
    index = seed if index is None else index
    return Episode(
        episode_id=episode_id_for("test", f"ep{index}.h5", index),
        source="test",
        embodiment=embodiment,
        instruction="push the block",
        fps=fps,
        state=state,
        action=action,
        timestamps=np.arange(t, dtype=np.float64) / fps,
        cameras=cameras,
        source_path=f"ep{index}.h5",
        source_index=index,
    )


CFG = WindowConfig(chunk=8, frame_stride=2, num_future=2, stride=4)


# ---- planning and accounting ---------------------------------------------------------


def test_plan_counts_balance():
    plan = plan_windows(30, CFG)  # span = max(8, 2·2 + 1) = 8, last start 22
    assert plan.made == (0, 4, 8, 12, 16, 20)
    assert plan.dropped == (24, 28)
    for length in (1, 7, 8, 9, 30, 57):
        for cfg in (CFG, WindowConfig(chunk=3, frame_stride=5, num_future=3, stride=1)):
            p = plan_windows(length, cfg)
            assert p.candidates == len(range(0, length, cfg.stride))
            assert all(t + cfg.span <= length for t in p.made)
            assert all(t + cfg.span > length for t in p.dropped)


def test_window_contents_and_ids():
    ep = make_episode(30)
    result = window_episode(ep, CFG)
    assert [w.start_frame for w in result.windows] == [0, 4, 8, 12, 16, 20]
    geometry = window_geometry(8, 2, 2)
    for w in result.windows:
        t = w.start_frame
        np.testing.assert_array_equal(w.action, ep.action[t : t + 8])
        np.testing.assert_array_equal(w.state, ep.state[t])
        assert w.frame_indices == (t, t + 2, t + 4) == w.camera_indices
        assert w.valid_steps == 8
        assert w.sample_id == sample_id_for(ep.episode_id, t, geometry)
        assert w.frames_fps == pytest.approx(10.0)
    # deterministic ids, and a different geometry gives different ids
    assert [w.sample_id for w in windows(ep, CFG)] == [w.sample_id for w in result.windows]
    other = windows(ep, WindowConfig(chunk=8, frame_stride=3, num_future=2, stride=4))
    assert not {w.sample_id for w in other} & {w.sample_id for w in result.windows}
    # dropped windows are in the ledger, one each
    assert result.dropped == (24, 28)
    assert [(r.stage, r.reason, r.window) for r in result.rejections] == [
        ("window", "past_end", 24),
        ("window", "past_end", 28),
    ]
    assert all(r.episode == ep.episode_id and r.path == "ep0.h5" for r in result.rejections)


def test_paper_geometry():
    cfg = get_preset("paper").windows
    assert (cfg.chunk, cfg.frame_stride, cfg.num_future) == (48, 12, 4)
    ep = make_episode(100, with_cameras=False)
    ws = windows(ep, cfg)
    assert [w.start_frame for w in ws] == [0, 12, 24, 36, 48]  # 48 + 49 = 97 <= 100, 60 + 49 > 100
    assert ws[-1].frame_indices == (48, 60, 72, 84, 96)
    assert ws[0].action.shape == (48, 4)


def test_pad_mode_holds_last_action_and_frame():
    cfg = WindowConfig(chunk=8, frame_stride=2, num_future=2, stride=4, tail="pad")
    ep = make_episode(30)
    result = window_episode(ep, cfg)
    assert [w.start_frame for w in result.windows] == list(range(0, 30, 4)) and not result.rejections
    last = result.windows[-1]  # t = 28: steps 28, 29 real
    assert last.valid_steps == 2
    np.testing.assert_array_equal(last.action[:2], ep.action[28:30])
    np.testing.assert_array_equal(last.action[2:], np.repeat(ep.action[29:30], 6, axis=0))
    assert last.frame_indices == (28, 30, 32)  # nominal, still increasing
    assert last.camera_indices == (28, 29, 29)  # clamped to the last frame


def test_too_short_episode_is_rejected_as_a_whole():
    ep = make_episode(6)
    result = window_episode(ep, CFG)
    assert result.windows == [] and result.dropped == (0, 4)
    reasons = [(r.reason, r.window) for r in result.rejections]
    assert reasons == [("past_end", 0), ("past_end", 4), ("too_short_for_window", -1)]


# ---- config ---------------------------------------------------------------------------


def test_presets_and_round_trip():
    assert {"default", "debug", "paper"} <= set(list_presets())
    paper = get_preset("paper")
    assert (paper.video.width, paper.video.height) == (384, 320)
    assert CurationConfig.from_dict(paper.to_dict()) == paper
    with pytest.raises(ConfigError, match="did you mean 'paper'"):
        get_preset("papr")


def test_load_config_files(tmp_path):
    toml = tmp_path / "c.toml"
    toml.write_text('preset = "paper"\n[windows]\nstride = 1\n[filters]\nenabled = ["length", "finite"]\n')
    cfg = load_config(toml)
    assert cfg.name == "paper" and cfg.windows.stride == 1 and cfg.windows.chunk == 48
    assert cfg.filters.enabled == ("length", "finite")
    js = tmp_path / "c.json"
    js.write_text(json.dumps({"video": {"width": 160, "height": 128, "format": "mp4"}}))
    assert load_config(js).video.format == "mp4"


@pytest.mark.parametrize(
    "data, message",
    [
        (
            {"windows": {"strid": 2}},
            r"windows\.strid: unknown field \(did you mean 'stride'\?\); allowed: \['chunk'",
        ),
        ({"colour": 1}, r"colour: unknown field.*allowed: \['name', 'filters'"),
        ({"windows": {"chunk": "48"}}, r"windows\.chunk: expected an integer"),
        ({"windows": {"chunk": 0}}, r"windows\.chunk: must be >= 1"),
        ({"video": {"width": 127}}, r"video\.width: must be even"),
        ({"windows": {"tail": "wrap"}}, r"windows\.tail: must be one of"),
        ({"filters": {"enabled": ["lenght"]}}, r"filters\.enabled: unknown filter 'lenght'"),
        ({"preset": "nope"}, r"unknown curation preset"),
    ],
)
def test_bad_config_names_the_field(data, message, tmp_path):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(data))
    with pytest.raises(ConfigError, match=message) as info:
        load_config(path)
    if "preset" not in data:
        assert str(path) in str(info.value)
    with pytest.raises(ConfigError, match=message):
        preset_with_overrides(data)
