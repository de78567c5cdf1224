"""A fault corpus for the reliability tests, built from synthetic episodes (nothing committed).

:func:`build_fault_corpus` writes three sources under ``root`` and returns the list of
injected faults (:class:`Fault`), each with the file it damaged and the ledger entry the
curation job must produce for it:

* ``raw/`` — raw videos + JSON sidecars (``curation/formats/raw_video.py``): good
  episodes plus a truncated mp4 (header lost), an mp4 whose frame data is cut behind an
  intact header, a text file named ``.mp4``, a deleted mp4, NaN and inf actions, an
  unknown embodiment, a video with fewer frames than the sidecar's steps, a non-UTF-8
  instruction, and an unreadable sidecar;
* ``lerobot_v2/`` — LeRobot v2.1: one episode parquet with ``action`` missing and an
  extra column, one with only an extra column (tolerated: the episode is kept);
* ``robomimic.hdf5`` — a demo whose image and action lengths differ and a zero-length demo.

**Unreadable file.** Tests run as root, for whom ``chmod 000`` blocks nothing, so inside
the curation run the unreadable sidecar is *simulated*: a directory stands where the
sidecar file is expected, so every ``open()`` of it fails with ``IsADirectoryError`` (an
``OSError``, as ``EACCES`` is). A real permission denial is checked separately by
:func:`load_as_user`, which loads an episode in a child process that dropped to an
unprivileged uid (``os.setuid``) over a ``chmod 000`` sidecar.

A :class:`Recorder` appends one JSON line per checked case to ``$GWP_RELIABILITY_LOG``
when set; ``benchmarks/reliability.py`` turns those lines into ``RELIABILITY.md``.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from curation.formats.hdf5_robomimic import write_robomimic_hdf5
from curation.formats.lerobot_v2 import write_lerobot_v2
from curation.formats.raw_video import write_raw_video
from curation.video import encode_video
from tests.support.helpers import cut_video_data, make_episodes, truncate_file

LOG_ENV = "GWP_RELIABILITY_LOG"


@dataclass(frozen=True)
class Fault:
    name: str  # short case name
    injected: str  # what was done to the file, in words
    path: str  # the file the ledger entry must name (suffix match)
    reasons: tuple[str, ...]  # acceptable ledger reasons
    detail: str = ""  # a fragment the ledger detail must contain ("" = any)
    episode: str = ""  # a fragment of the ledger's episode label, where one file holds several


@dataclass(frozen=True)
class Row:
    """One line of RELIABILITY.md."""

    group: str
    case: str
    injected: str
    expected: str
    observed: str
    ok: bool


class Recorder:
    """Collects :class:`Row` s; writes them to ``$GWP_RELIABILITY_LOG`` (JSON lines) when set."""

    def __init__(self) -> None:
        self.rows: list[Row] = []

    def add(self, group: str, case: str, injected: str, expected: str, observed: str, ok: bool) -> Row:
        row = Row(group, case, injected, expected, observed, bool(ok))
        self.rows.append(row)
        path = os.environ.get(LOG_ENV)
        if path:
            with open(path, "a") as fh:
                fh.write(json.dumps(asdict(row)) + "\n")
        return row


# ---- the corpus -----------------------------------------------------------------------------


def _sidecar(root: Path, i: int) -> Path:
    return root / f"episode_{i:06d}.json"


def _video(root: Path, i: int, role: str = "high") -> Path:
    return root / f"episode_{i:06d}.{role}.mp4"


def _edit_sidecar(path: Path, **changes) -> None:
    meta = json.loads(path.read_text())
    meta.update(changes)
    path.write_text(json.dumps(meta))


GOOD_RAW = 3  # raw/ episodes 0..2 are good
RAW_LENGTHS = (20, 24, 28, *[22] * 10)  # 3 good, then one per raw fault


def build_fault_corpus(root: Path) -> tuple[dict[str, Path], list[Fault], int]:
    """Write the corpus; returns (source name -> path, the injected faults, good episode count)."""
    root.mkdir(parents=True, exist_ok=True)
    faults: list[Fault] = []

    # -- raw video + sidecars: 3 good episodes, 9 broken ones --------------------------------------
    raw = root / "raw"
    eps = make_episodes(RAW_LENGTHS, seed=11, source="raw")
    write_raw_video(eps, raw)

    def fault(i: int, name: str, injected: str, reasons: tuple[str, ...], detail: str = "", path=None):
        faults.append(Fault(name, injected, str(path or _sidecar(raw, i)), reasons, detail))

    i = GOOD_RAW
    truncate_file(_video(raw, i), keep=0.5)
    fault(
        i, "truncated mp4", "mp4 cut to half its size (moov header lost)", ("bad_video",), path=_video(raw, i)
    )
    i += 1
    cut_video_data(_video(raw, i), keep=0.6)
    fault(
        i,
        "truncated mp4 data",
        "mp4 rewritten header-first, frame data cut at 60 % (header still promises every frame)",
        ("bad_video", "frame_count_mismatch", "video_too_short"),
        path=_video(raw, i),
    )
    i += 1
    _video(raw, i).write_bytes(b"this is a text file, not a video\n" * 40)
    fault(
        i, "mp4 that is not a video", "text bytes in the high-camera mp4", ("bad_video",), path=_video(raw, i)
    )
    i += 1
    _video(raw, i).unlink()
    fault(i, "missing video file", "episode's high-camera mp4 deleted", ("missing_video",), "does not exist")
    i += 1
    action = eps[i].action.astype(np.float64).tolist()
    action[5][2] = float("nan")
    _sidecar(raw, i).write_text(json.dumps({**json.loads(_sidecar(raw, i).read_text()), "action": action}))
    fault(i, "NaN action", "one action value set to NaN", ("nan_action",), "NaN")
    i += 1
    action = eps[i].action.astype(np.float64).tolist()
    action[7][0] = float("inf")
    action[8][1] = float("-inf")
    _sidecar(raw, i).write_text(json.dumps({**json.loads(_sidecar(raw, i).read_text()), "action": action}))
    fault(i, "inf actions", "two action values set to +inf / -inf", ("nan_action",), "inf")
    i += 1
    _edit_sidecar(_sidecar(raw, i), embodiment="warehouse_bot_9000")
    fault(
        i,
        "unknown embodiment",
        "sidecar names embodiment 'warehouse_bot_9000'",
        ("unknown_embodiment",),
        "warehouse_bot_9000",
    )
    i += 1
    frames = eps[i].cameras["high"].array[:-3]
    encode_video(frames, _video(raw, i), fps=eps[i].fps, codec="h264")
    fault(
        i,
        "frame count disagrees",
        f"high-camera mp4 re-encoded with {len(frames)} frames for {eps[i].length} declared steps",
        ("length_mismatch",),
        "camera high",
    )
    i += 1
    text = _sidecar(raw, i).read_text().replace(eps[i].instruction, "open the dr\udcffwer")
    _sidecar(raw, i).write_bytes(text.encode("utf-8", "surrogateescape"))  # a raw 0xff byte
    fault(i, "non-UTF-8 instruction", "byte 0xff inside the instruction text", ("bad_sidecar",), "utf-8")
    i += 1
    side = _sidecar(raw, i)
    side.unlink()
    side.mkdir()  # see the module docstring: root reads through chmod 000
    fault(
        i,
        "unreadable file",
        "sidecar path is a directory (simulated read failure; chmod 000 does not stop root)",
        ("unreadable",),
        "Is a directory",
    )
    assert i + 1 == len(RAW_LENGTHS)

    # -- LeRobot v2.1: 3 good episodes, one with a missing + extra column, one with an extra column --
    import pyarrow as pa
    import pyarrow.parquet as pq

    lr = root / "lerobot_v2"
    write_lerobot_v2(make_episodes((21, 25, 19, 23), seed=22, source="lerobot"), lr)
    parquets = sorted((lr / "data").rglob("episode_*.parquet"))
    table = pq.read_table(parquets[3])
    broken = table.drop_columns(["action"]).append_column("gripper_temp", pa.array(np.ones(len(table))))
    pq.write_table(broken, parquets[3])
    faults.append(
        Fault(
            "parquet missing + extra column",
            "episode parquet without 'action', with an extra 'gripper_temp' column",
            str(parquets[3]),
            ("missing_column",),
            "'action'",
        )
    )
    table = pq.read_table(parquets[1])
    pq.write_table(table.append_column("gripper_temp", pa.array(np.ones(len(table)))), parquets[1])

    # -- robomimic HDF5: 3 good demos, image/action length mismatch, zero-length demo -----------------
    import h5py

    h5 = root / "robomimic.hdf5"
    write_robomimic_hdf5(make_episodes((18, 26, 21, 24), seed=33, source="robomimic"), h5)
    with h5py.File(h5, "a") as f:
        demo = f["data/demo_3"]
        actions = demo["actions"][:]
        del demo["actions"]
        demo.create_dataset("actions", data=actions[:-4])
        demo.attrs["num_samples"] = len(actions) - 4
        zero = f.create_group("data/demo_4")
        for key, value in f["data/demo_0"].attrs.items():
            zero.attrs[key] = value
        zero.attrs["num_samples"] = 0
        for name, ds in f["data/demo_0"].items():
            if isinstance(ds, h5py.Dataset):
                zero.create_dataset(name, data=ds[:0])
        obs = zero.create_group("obs")
        for name, ds in f["data/demo_0/obs"].items():
            obs.create_dataset(name, data=ds[:0])
    faults.append(
        Fault(
            "HDF5 image/action lengths differ",
            "demo_3: 'actions' cut 4 steps shorter than its images and states",
            str(h5),
            ("length_mismatch",),
            "lengths differ",
            episode="demo_3",
        )
    )
    faults.append(
        Fault(
            "zero-length episode",
            "demo_4: every dataset has 0 rows",
            str(h5),
            ("empty_episode",),
            episode="demo_4",
        )
    )
    sources = {"raw": raw, "lerobot_v2": lr, "robomimic": h5}
    good = GOOD_RAW + 3 + 3
    return sources, faults, good


# ---- a real permission denial, as another user -----------------------------------------------------

NOBODY = 65534


def load_as_user(sidecar_root: Path, uid: int = NOBODY) -> dict:
    """Load episode 0 of a raw-video source in a child process running as ``uid``.

    The child calls ``os.setuid`` before touching the file, so a ``chmod 000`` file is really
    unreadable to it even when the test runs as root. Returns the rejection row (or
    ``{"episode": ...}`` if it loaded).
    """
    import multiprocessing as mp

    ctx = mp.get_context("fork")
    parent, child = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_child_load, args=(str(sidecar_root), uid, child))
    proc.start()
    child.close()
    result = parent.recv()
    proc.join(30)
    return result


def _child_load(root: str, uid: int, conn) -> None:
    try:
        os.setgid(uid)
        os.setuid(uid)
        from curation.ingest import SourceSpec, discover, load
        from schemas import Rejection

        refs, rejected = discover(SourceSpec(root))
        item = rejected[0] if rejected else load(refs[0])
        conn.send(item.to_row() if isinstance(item, Rejection) else {"episode": item.episode_id})
    except Exception as err:  # report, never hang the parent
        conn.send({"error": f"{type(err).__name__}: {err}"})
    finally:
        conn.close()


def make_permission_source() -> Path:
    """A one-episode raw-video source in a fresh world-traversable temp folder, its sidecar ``chmod 000``.

    The folder is made with :func:`tempfile.mkdtemp` under the system temp dir (sticky, world
    traversable) rather than under pytest's private 0700 tmp tree, so the unprivileged child
    can reach it; the caller removes it.
    """
    import tempfile

    root = Path(tempfile.mkdtemp(prefix="gwp-perm-"))
    root.chmod(0o755)
    write_raw_video(make_episodes((16,), seed=44, source="perm"), root)
    for p in root.iterdir():
        p.chmod(0o644)
    _sidecar(root, 0).chmod(0o000)
    return root
