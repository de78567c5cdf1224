"""Shared test utilities: small simulated Meta-World-like episodes and round-trip checks.

* :func:`make_episodes` (or :func:`iter_episodes`, one at a time) builds validated :class:`~schemas.Episode` objects for the
  ``metaworld_sawyer`` embodiment (4-D state and action, cameras ``high`` and ``wrist``)
  with inline frames. Lengths differ per episode so that an off-by-one in a reader's
  episode boundaries shows up; states and actions are smooth random walks (a plausible
  arm), instructions come from a few Meta-World task phrasings.
* Frames are smooth moving gradients plus a soft moving blob: cheap to make, distinct per
  frame and per camera, and friendly to lossy codecs (h264/AV1 reach well above 30 dB PSNR
  at 64², so a reader that mixes up frames fails the PSNR bar by a wide margin).
* :func:`write_all_formats` writes one list of episodes in every registered source format
  through :func:`curation.formats.writer`, each under ``root/<format>``, and returns the
  path each writer reports (RLDS answers its ``<name>/<version>`` folder, robomimic a file).
* :func:`assert_same_episode` compares a read-back episode with the original: state,
  action, instruction and length exactly; frames exactly (lossless) or by PSNR (lossy).

Frames are ``uint8 [T, H, W, 3]`` everywhere (``frames_THWC``).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from curation.formats import FORMATS, writer
from curation.frames import decode_frames
from schemas import Episode, FrameRef, episode_id_for

EMBODIMENT = "metaworld_sawyer"
ROLES = ("high", "wrist")
TASKS = ("push the puck to the goal", "open the drawer", "press the button from the top")
DEFAULT_LENGTHS = (14, 21, 27)
# Formats whose frames are stored without loss (HDF5 arrays, RLDS PNG); the rest go through mp4.
LOSSLESS_FORMATS = frozenset({"hdf5_robomimic", "hdf5_aloha", "rlds"})
MIN_PSNR_DB = 30.0


def smooth_frames(t: int, phase: float, h: int = 64, w: int = 64) -> np.ndarray:
    """uint8 [T, H, W, 3]: drifting sinusoidal gradients and a soft blob, distinct per frame."""
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    k = np.arange(t, dtype=np.float64)[:, None, None] + phase
    cx = w / 2 + 0.3 * w * np.sin(0.21 * k)  # blob centre moves smoothly through the frame
    cy = h / 2 + 0.3 * h * np.cos(0.17 * k)
    blob = 90 * np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / (2 * (0.12 * w) ** 2))
    r = 110 + 70 * np.sin(x / (0.14 * w) + 0.35 * k) + blob
    g = 120 + 60 * np.cos(y / (0.17 * h) - 0.25 * k)
    b = 60 + 50 * np.sin((x + y) / (0.3 * (h + w)) + 0.1 * k) + 0.5 * blob
    return np.clip(np.rint(np.stack([r, g, b], -1)), 0, 255).astype(np.uint8)


def iter_episodes(
    lengths: Sequence[int] = DEFAULT_LENGTHS,
    *,
    size: int = 64,
    fps: float = 10.0,
    source: str = "synthetic",
    seed: int = 0,
) -> Iterator[Episode]:
    """Validated metaworld_sawyer episodes of the given ``lengths``, frames inline (size × size),
    made one at a time (a benchmark's thousand episodes would hold gigabytes of frames at once)."""
    rng = np.random.default_rng(seed)
    for i, t in enumerate(lengths):
        state_TD = np.cumsum(rng.normal(scale=0.01, size=(t, 4)), axis=0) + np.array([0.0, 0.6, 0.2, 0.5])
        action_TD = np.clip(rng.normal(scale=0.5, size=(t, 4)), -1, 1)
        yield Episode(
            episode_id=episode_id_for(source, "memory", i),
            source=source,
            embodiment=EMBODIMENT,
            instruction=TASKS[i % len(TASKS)],
            fps=float(fps),
            state=state_TD.astype(np.float32),
            action=action_TD.astype(np.float32),
            timestamps=np.arange(t, dtype=np.float64) / fps,
            cameras={
                "high": FrameRef(kind="inline", array=smooth_frames(t, 13.0 * i, size, size), fps=fps),
                "wrist": FrameRef(kind="inline", array=smooth_frames(t, 7.0 * i + 50, size, size), fps=fps),
            },
            source_index=i,
        ).validate()


def make_episodes(lengths: Sequence[int] = DEFAULT_LENGTHS, **kw) -> list[Episode]:
    """:func:`iter_episodes` as a list (same keywords)."""
    return list(iter_episodes(lengths, **kw))


def target_for(fmt: str, root: Path) -> Path:
    """Where :func:`write_all_formats` puts ``fmt``: robomimic is one file, the rest folders."""
    return root / (f"{fmt}.hdf5" if fmt == "hdf5_robomimic" else fmt)


def write_all_formats(
    episodes: Sequence[Episode], root: Path, formats: Sequence[str] | None = None
) -> dict[str, Path]:
    """Write ``episodes`` in every format (default: all registered) under ``root``; format -> path."""
    root.mkdir(parents=True, exist_ok=True)
    return {fmt: Path(writer(fmt)(list(episodes), target_for(fmt, root))) for fmt in formats or FORMATS}


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """Peak signal-to-noise ratio in dB of two uint8 arrays (capped at 100 dB when equal)."""
    if a.shape != b.shape:
        raise AssertionError(f"shape {a.shape} != {b.shape}")
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return 100.0 if mse == 0 else float(10 * np.log10(255.0**2 / mse))


def frames_of(episode: Episode) -> dict[str, np.ndarray]:
    """Every camera's frames, decoded: role -> uint8 [T, H, W, 3]."""
    return {role: decode_frames(ref) for role, ref in episode.cameras.items()}


def assert_same_episode(
    got: Episode, want: Episode, *, lossless: bool, min_psnr: float = MIN_PSNR_DB, where: str = ""
) -> dict[str, float]:
    """Numbers and text exactly equal; frames equal (lossless) or above ``min_psnr``. Returns PSNR per role."""
    tag = f"{where}: " if where else ""
    assert got.length == want.length, f"{tag}length {got.length} != {want.length}"
    assert got.embodiment == want.embodiment, f"{tag}embodiment {got.embodiment} != {want.embodiment}"
    assert got.instruction == want.instruction, (
        f"{tag}instruction {got.instruction!r} != {want.instruction!r}"
    )
    assert got.state.dtype == np.float32 and got.action.dtype == np.float32, tag + "dtype"
    np.testing.assert_array_equal(got.state, want.state, err_msg=f"{tag}state")
    np.testing.assert_array_equal(got.action, want.action, err_msg=f"{tag}action")
    assert set(got.cameras) == set(want.cameras), (
        f"{tag}cameras {sorted(got.cameras)} != {sorted(want.cameras)}"
    )
    got_frames, want_frames = frames_of(got), frames_of(want)
    scores = {}
    for role, want_THWC in want_frames.items():
        got_THWC = got_frames[role]
        assert got_THWC.shape == want_THWC.shape, f"{tag}{role} frames {got_THWC.shape} != {want_THWC.shape}"
        if lossless:
            np.testing.assert_array_equal(got_THWC, want_THWC, err_msg=f"{tag}{role} frames")
        scores[role] = psnr(got_THWC, want_THWC)
        assert scores[role] >= min_psnr, f"{tag}{role} PSNR {scores[role]:.1f} dB < {min_psnr} dB"
    return scores


# ---- broken inputs ------------------------------------------------------------------------


def truncate_file(path: Path, keep: float = 0.5) -> None:
    """Cut ``path`` to ``keep`` of its size (an mp4 written moov-last then loses its header)."""
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def cut_video_data(path: Path, keep: float = 0.6) -> None:
    """Rewrite an mp4 with its header first (``movflags=faststart``), then cut its frame data.

    The header still promises every frame, so a cheap probe passes and only decoding finds
    the loss: the case a reader cannot catch without decoding.
    """
    import av

    tmp = path.with_name(path.name + ".faststart.mp4")
    with av.open(str(path)) as src, av.open(str(tmp), "w", options={"movflags": "faststart"}) as dst:
        stream = dst.add_stream_from_template(src.streams.video[0])
        for packet in src.demux(src.streams.video[0]):
            if packet.dts is None:  # the demuxer's empty flush packet
                continue
            packet.stream = stream
            dst.mux(packet)
    data = tmp.read_bytes()
    tmp.unlink()
    if not 0 <= data.find(b"moov") < data.find(b"mdat"):
        raise AssertionError(f"{path}: faststart remux did not put the header first")
    path.write_bytes(data[: int(len(data) * keep)])
