"""Pixel-format, exposure and accounting cases for the reliability tests (nothing committed).

:func:`build_pixel_corpus` writes small synthetic sources under ``root`` and returns one
:class:`Case` per source. Each case says what went in (``inputs``: episodes, TFRecord records
or HDF5 members the source holds), which episodes must come out and with exactly which
``uint8`` pixels of camera ``high``, and which ledger lines (:class:`tests.support.faults.Fault`:
reason, file, detail and episode fragments) must be written for the rest, so that the test can
check ``inputs = outputs + rejected`` and every pixel.

* group ``pixels`` — robomimic HDF5 files whose ``agentview_image`` is uint16, float in [0, 1],
  float holding whole numbers in [0, 255], float out of range, signed int16, grayscale
  ``[T, H, W]`` and ``[T, H, W, 1]``, RGBA, two channels, BGR declared in the mapping
  (``extra.channel_order``), a range declared in the mapping (``extra.pixel_range``: float in
  [-1, 1], 12-bit in uint16, and a value beyond it); an RLDS dataset whose PNGs are 16-bit gray (``I;16``), 8-bit gray
  (``L``), gray + alpha (``LA``), RGBA and palette (``P``).
* group ``exposure`` — a robomimic file with a good, a mostly saturated and a mostly black
  episode, run through the real per-episode pass (:func:`curation.episode_samples.process_episode`).
* group ``accounting`` — RLDS shards with a corrupt length CRC (the scan resyncs), two
  corrupt headers in a row (a record vanishes inside the skipped bytes), a corrupt payload and
  a record cut by truncation; a robomimic file with a dataset where a demo group belongs, a
  group not named ``demo_N``, a soft link and an external link under ``/data``; an ALOHA
  file with a group among its camera datasets, a soft link and an unknown dataset; and an HDF5
  file whose container header is overwritten.

Expected pixels are written out by hand from the stored values (``v16 = 257·v``, ``f = v/255``,
``gray -> (g, g, g)``, ``BGR -> reversed``, palette index -> its colour), never by calling the
code under test.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from curation.formats.hdf5_aloha import write_aloha_hdf5
from curation.formats.hdf5_robomimic import write_robomimic_hdf5
from curation.formats.mapping import SIDECAR_NAME
from curation.formats.rlds_write import write_rlds
from curation.formats.tf_example import Feature, decode_example, encode_example
from curation.formats.tfrecord import iter_records, write_records
from tests.support.faults import Fault
from tests.support.helpers import make_episodes, smooth_frames

T, SIZE = 10, 16
IMAGE_KEY = "data/demo_0/obs/agentview_image"
RLDS_IMAGE = "steps/observation/image"


@dataclass
class Case:
    group: str  # "pixels" | "exposure" | "accounting"
    name: str
    injected: str
    source: str  # path given to curation as one source
    inputs: int  # episodes / records / members the source holds
    # expected high-camera frames of the episodes that come out, in order (empty: count only)
    frames: list[np.ndarray] = field(default_factory=list)
    faults: list[Fault] = field(default_factory=list)  # expected ledger lines


def _one_camera_episodes(lengths, seed: int, source: str, size: int = SIZE):
    """metaworld_sawyer episodes with only the ``high`` camera (smaller files, one key to damage)."""
    eps = make_episodes(lengths, size=size, seed=seed, source=source)
    return [ep.with_(cameras={"high": ep.cameras["high"]}) for ep in eps]


def _robomimic(path: Path, seed: int, lengths=(T,), size: int = SIZE):
    eps = _one_camera_episodes(lengths, seed, path.stem, size)
    write_robomimic_hdf5(eps, path)
    return eps


def _replace_dataset(path: Path, key: str, data: np.ndarray) -> None:
    import h5py

    with h5py.File(path, "a") as f:
        del f[key]
        f.create_dataset(key, data=data)


def _set_extra(path: Path, extra: dict) -> None:
    """Add ``extra`` (e.g. ``{"channel_order": {"agentview_image": "bgr"}}``) to the file's mapping."""
    sidecar = Path(str(path) + "." + SIDECAR_NAME)
    mapping = json.loads(sidecar.read_text())
    mapping["extra"] = {**mapping.get("extra", {}), **extra}
    sidecar.write_text(json.dumps(mapping))


# ---- pixels ---------------------------------------------------------------------------------------


def _hdf5_pixel_cases(root: Path) -> list[Case]:
    cases: list[Case] = []
    base = smooth_frames(T, 3.0, SIZE, SIZE)  # uint8 [T, H, W, 3]: what every good variant must give
    gray = base[..., 1]  # uint8 [T, H, W]

    def written(name: str, stored: np.ndarray, extra: dict | None) -> Path:
        """A robomimic file whose camera holds ``stored`` (and the mapping's ``extra``)."""
        path = root / f"{name}.hdf5"
        _robomimic(path, seed=5)
        _replace_dataset(path, IMAGE_KEY, stored)
        if extra:
            _set_extra(path, extra)
        return path

    def good(
        name: str, injected: str, stored: np.ndarray, want: np.ndarray, extra: dict | None = None
    ) -> None:
        path = written(name, stored, extra)
        cases.append(Case("pixels", injected.split(":")[0], injected, str(path), 1, frames=[want]))

    def bad(
        name: str, injected: str, stored: np.ndarray, reason: str, detail: str, extra: dict | None = None
    ) -> None:
        path = written(name, stored, extra)
        fault = Fault(injected.split(":")[0], injected, str(path), (reason,), detail)
        cases.append(Case("pixels", fault.name, injected, str(path), 1, faults=[fault]))

    rng = np.random.default_rng(1)
    noise = rng.integers(-100, 101, base.shape)  # within half a step of 257: still rounds to v
    v16 = np.clip(base.astype(np.int64) * 257 + noise, 0, 65535).astype(np.uint16)
    good("uint16", "HDF5 uint16 frames: 257·v plus noise in [-100, 100]", v16, base)
    good("float01", "HDF5 float32 frames in [0, 1]: v / 255", base.astype(np.float32) / 255, base)
    good("float255", "HDF5 float64 frames of whole numbers in [0, 255]", base.astype(np.float64), base)
    good("gray", "HDF5 grayscale frames [T, H, W]", gray, np.repeat(gray[..., None], 3, -1))
    good("gray1", "HDF5 grayscale frames [T, H, W, 1]", gray[..., None], np.repeat(gray[..., None], 3, -1))
    alpha = rng.integers(0, 256, (*base.shape[:3], 1), dtype=np.uint8)
    good("rgba", "HDF5 RGBA frames (random alpha)", np.concatenate([base, alpha], -1), base)
    good(
        "bgr",
        "HDF5 BGR frames: mapping extra.channel_order = bgr",
        np.ascontiguousarray(base[..., ::-1]),
        base,
        {"channel_order": {"agentview_image": "bgr"}},
    )
    signed = base.astype(np.float64) / 127.5 - 1  # in [-1, 1]
    good(
        "declared_float",
        "HDF5 float64 frames in [-1, 1]: mapping extra.pixel_range = [-1, 1]",
        signed,
        base,
        {"pixel_range": {"agentview_image": [-1, 1]}},
    )
    v12 = rng.integers(0, 4096, base.shape).astype(np.uint16)
    good(
        "declared_12bit",
        "HDF5 uint16 frames of a 12-bit camera: mapping extra.pixel_range = [0, 4095]",
        v12,
        np.floor(v12.astype(np.float64) * 255 / 4095 + 0.5).astype(np.uint8),
        {"pixel_range": {"agentview_image": [0, 4095]}},
    )
    bad(
        "declared_violated",
        "HDF5 uint16 frames reaching 4096 while the mapping declares pixel_range [0, 4095]",
        np.where(v12 == v12.max(), 4096, v12).astype(np.uint16),
        "bad_pixel_range",
        "outside the declared pixel_range",
        {"pixel_range": {"agentview_image": [0, 4095]}},
    )
    bad(
        "float_range",
        "HDF5 float32 frames out of range: 3·v/255 − 1, in [−1, 2]",
        base.astype(np.float32) * 3 / 255 - 1,
        "bad_pixel_range",
        "float32",
    )
    bad("int16", "HDF5 int16 frames (signed)", base.astype(np.int16), "bad_pixel_dtype", "int16")
    bad("two_channels", "HDF5 frames with 2 channels", base[..., :2], "bad_shape", "agentview_image")
    return cases


def _png(arr: np.ndarray, mode: str | None = None, palette: np.ndarray | None = None) -> bytes:
    from PIL import Image

    im = Image.fromarray(arr) if mode is None else Image.fromarray(arr, mode=mode)
    if palette is not None:
        im.putpalette(palette.reshape(-1).tolist())
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


def _rlds_pixel_case(root: Path) -> Case:
    """Five RLDS episodes, each camera stored in another PNG mode."""
    eps = _one_camera_episodes((T,) * 5, seed=7, source="rlds_modes")
    version = write_rlds(eps, root / "rlds_modes", dataset_name="rlds_modes")
    shard = next(version.glob("*.tfrecord*"))
    rng = np.random.default_rng(2)
    g16 = rng.integers(0, 65536, (T, SIZE, SIZE), dtype=np.uint16)
    g8 = rng.integers(0, 256, (T, SIZE, SIZE), dtype=np.uint8)
    a8 = rng.integers(0, 256, (T, SIZE, SIZE), dtype=np.uint8)
    rgb = smooth_frames(T, 9.0, SIZE, SIZE)
    palette = rng.integers(0, 256, (256, 3), dtype=np.uint8)
    idx = rng.integers(0, 256, (T, SIZE, SIZE), dtype=np.uint8)
    variants = [  # (PNGs per frame, expected uint8 RGB)
        (
            [_png(f) for f in g16],
            np.repeat((((g16.astype(np.uint32) + 128) // 257).astype(np.uint8))[..., None], 3, -1),
        ),
        ([_png(f) for f in g8], np.repeat(g8[..., None], 3, -1)),
        (
            [_png(np.stack([g, a], -1), "LA") for g, a in zip(g8, a8, strict=True)],
            np.repeat(g8[..., None], 3, -1),
        ),
        ([_png(np.concatenate([f, a[..., None]], -1)) for f, a in zip(rgb, a8, strict=True)], rgb),
        ([_png(i, "P", palette) for i in idx], palette[idx]),
    ]
    records = []
    for data, (pngs, _) in zip(iter_records(shard), variants, strict=True):
        ex = decode_example(data)
        ex[RLDS_IMAGE] = Feature("bytes", tuple(pngs))
        records.append(encode_example(ex))
    write_records(shard, records)
    return Case(
        "pixels",
        "PNG modes in RLDS",
        "RLDS episodes whose PNGs are 16-bit gray (I;16), gray (L), gray+alpha (LA), RGBA and palette (P)",
        str(version),
        5,
        frames=[want for _, want in variants],
    )


# ---- exposure -------------------------------------------------------------------------------------


def _exposure_case(root: Path) -> Case:
    """A good, an over-exposed and an under-exposed episode (70 % of every frame clipped)."""
    path = root / "exposure.hdf5"
    eps = _one_camera_episodes((24, 24, 24), seed=9, source="exposure", size=48)
    frames = [ep.cameras["high"].array.copy() for ep in eps]
    cut = int(0.7 * 48)  # the top 70 % of the rows; the rest keeps its texture and motion
    frames[1][:, :cut] = 255
    frames[2][:, :cut] = 0
    from schemas import FrameRef

    eps = [
        ep.with_(cameras={"high": FrameRef(kind="inline", array=f, fps=ep.fps)})
        for ep, f in zip(eps, frames, strict=True)
    ]
    write_robomimic_hdf5(eps, path)
    faults = [
        Fault(
            "over-exposed episode",
            "demo_1: top 70 % of every frame set to 255",
            str(path),
            ("overexposed",),
            "of sampled pixels >= 250",
            "1",
        ),
        Fault(
            "under-exposed episode",
            "demo_2: top 70 % of every frame set to 0",
            str(path),
            ("underexposed",),
            "of sampled pixels <= 5",
            "2",
        ),
    ]
    return Case("exposure", "exposure", "good, over- and under-exposed demos", str(path), 3, faults=faults)


# ---- accounting -----------------------------------------------------------------------------------


def _rlds_shard(root: Path, name: str, n: int, seed: int) -> tuple[Path, Path, list[int], list[np.ndarray]]:
    """An n-episode, one-shard RLDS dataset: (version folder, shard, record offsets, high frames)."""
    from curation.formats.tfrecord import scan_records

    eps = _one_camera_episodes((T,) * n, seed, name)
    version = write_rlds(eps, root / name, dataset_name=name)
    shard = next(version.glob("*.tfrecord*"))
    frames = [ep.cameras["high"].array for ep in eps]
    return version, shard, [s.offset for s in scan_records(shard)], frames


def _flip(path: Path, offset: int, mask: int = 0x10) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= mask
    path.write_bytes(bytes(data))


def _tfrecord_cases(root: Path) -> list[Case]:
    cases = []
    version, shard, offs, frames = _rlds_shard(root, "length_crc", 4, 21)
    _flip(shard, offs[1] + 2)  # a length byte of record 1
    cases.append(
        Case(
            "accounting",
            "TFRecord length CRC",
            "4 records; a length byte of record 1 flipped (its length CRC fails, framing lost there)",
            str(version),
            4,
            frames=[frames[0], frames[2], frames[3]],  # the records after the bad header, found again
            faults=[Fault("length CRC", "", str(shard), ("corrupt_record",), "length CRC mismatch", "#1")],
        )
    )
    version, shard, offs, frames = _rlds_shard(root, "two_headers", 5, 22)
    _flip(shard, offs[1] + 2)
    _flip(shard, offs[2] + 3)  # the next header too: record 2 vanishes inside the skipped bytes
    cases.append(
        Case(
            "accounting",
            "two corrupt TFRecord headers",
            "5 records; length bytes of records 1 and 2 flipped (the resync skips both)",
            str(version),
            5,
            frames=[frames[0], frames[3], frames[4]],
            faults=[
                Fault(
                    "length CRC",
                    "",
                    str(shard),
                    ("corrupt_record",),
                    f"bytes {offs[1]}..{offs[3]} skipped",
                    "#1",
                ),
                Fault(
                    "record lost in skipped bytes",
                    "",
                    str(shard),
                    ("corrupt_record",),
                    "record 5 of 5 is lost",
                    "#4",
                ),
            ],
        )
    )
    version, shard, offs, frames = _rlds_shard(root, "data_crc", 3, 23)
    _flip(shard, offs[0] + 12 + 40, 0xFF)  # a payload byte of record 0
    cases.append(
        Case(
            "accounting",
            "TFRecord data CRC",
            "3 records; a payload byte of record 0 flipped",
            str(version),
            3,
            frames=frames[1:],
            faults=[Fault("data CRC", "", str(shard), ("corrupt_record",), "data CRC mismatch", "#0")],
        )
    )
    version, shard, offs, frames = _rlds_shard(root, "cut_record", 3, 24)
    shard.write_bytes(shard.read_bytes()[: offs[2] + 40])  # the file ends inside record 2
    cases.append(
        Case(
            "accounting",
            "cut TFRecord record",
            "3 records; the shard cut 40 bytes into record 2",
            str(version),
            3,
            frames=frames[:2],
            faults=[Fault("cut record", "", str(shard), ("corrupt_record",), "truncated", "#2")],
        )
    )
    return cases


def _hdf5_member_cases(root: Path) -> list[Case]:
    import h5py

    cases = []
    path = root / "members.hdf5"
    other = root / "other.hdf5"
    _robomimic(other, seed=31)
    _robomimic(path, seed=32, lengths=(T, T + 2))
    with h5py.File(path, "a") as f:
        f.create_dataset("data/demo_2", data=np.zeros((T, 4), np.float32))  # a dataset, not a demo group
        foo = f.create_group("data/foo")  # a group that is not demo_N
        f.copy(f["data/demo_0"], foo, name="demo_0")
        f["data/demo_3"] = h5py.SoftLink("/data/demo_0")  # would repeat demo_0
        f["data/demo_4"] = h5py.ExternalLink(other.name, "/data/demo_0")  # would read another file
    members = [
        ("data/demo_2", "is a dataset where a demo group should be"),
        ("data/foo", "group data/foo does not match the layout"),
        ("data/demo_3", "soft link to /data/demo_0"),
        ("data/demo_4", "external link to other.hdf5:/data/demo_0"),
    ]
    cases.append(
        Case(
            "accounting",
            "robomimic unexpected members",
            "2 demos plus, under /data: a dataset demo_2, a group foo, a soft link demo_3 -> demo_0, "
            "an external link demo_4 -> other.hdf5",
            str(path),
            2 + len(members),
            faults=[Fault(m, "", str(path), ("unexpected_member",), d, m) for m, d in members],
        )
    )
    aloha = root / "aloha"
    write_aloha_hdf5(_one_camera_episodes((T,), 33, "aloha"), aloha)
    ep_file = aloha / "episode_0.hdf5"
    with h5py.File(ep_file, "a") as f:
        f.create_group("/observations/images/cam_sub").create_dataset("x", data=np.zeros(3))
        f["/observations/qpos_alias"] = h5py.SoftLink("/observations/qpos")
        f.create_dataset("/notes", data=np.zeros(2))
    members = [
        (
            "/observations/images/cam_sub",
            "group /observations/images/cam_sub is not part of the ALOHA layout",
        ),
        ("/observations/qpos_alias", "soft link to /observations/qpos"),
        ("/notes", "dataset /notes is not part of the ALOHA layout"),
    ]
    cases.append(
        Case(
            "accounting",
            "ALOHA unexpected members",
            "1 episode file plus a group among the camera datasets, a soft link beside qpos, a dataset /notes",
            str(aloha),
            1 + len(members),
            faults=[Fault(m, "", str(ep_file), ("unexpected_member",), d, m) for m, d in members],
        )
    )
    broken = root / "broken_header.hdf5"
    _robomimic(broken, seed=34)
    data = bytearray(broken.read_bytes())
    data[:64] = b"\0" * 64  # the HDF5 superblock: signature and root addresses
    broken.write_bytes(bytes(data))
    cases.append(
        Case(
            "accounting",
            "corrupt HDF5 container header",
            "robomimic file whose first 64 bytes (superblock) are zeroed",
            str(broken),
            1,
            faults=[Fault("corrupt header", "", str(broken), ("bad_file", "unknown_layout"), "", "")],
        )
    )
    return cases


def build_pixel_corpus(root: Path) -> list[Case]:
    """Write every case's source under ``root``; the cases in table order."""
    root.mkdir(parents=True, exist_ok=True)
    cases = _hdf5_pixel_cases(root)
    cases.append(_rlds_pixel_case(root))
    cases.append(_exposure_case(root))
    cases += _tfrecord_cases(root)
    cases += _hdf5_member_cases(root)
    return cases
