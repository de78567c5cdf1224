"""Cross-check our TF-free RLDS writer/reader against real TensorFlow Datasets.

Run by scripts/check_rlds_tfds.sh in two interpreters (the project never imports TF):

1. ``write OUTDIR``        (project .venv) synthetic episodes -> ``write_rlds`` -> OUTDIR/ours;
                           what was written -> OUTDIR/expected.npz
2. ``verify OUTDIR``       (.venvs/tfds)  ``tfds.builder_from_directory`` loads OUTDIR/ours and
                           every episode is compared with expected.npz (steps, actions, states,
                           instruction, decoded images, flags, fps); then the same episodes are
                           written by TFDS itself (a GeneratorBasedBuilder) to OUTDIR/native
3. ``read-native OUTDIR``  (project .venv) ``RLDSReader`` reads the TFDS-written OUTDIR/native
                           and compares with expected.npz

Any mismatch prints what differs and exits non-zero. Only numpy is imported at the top so
that the file runs in both environments.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

NAME = "gwp_check"
LENGTHS = (6, 11, 4)
H = W = 64


def _expected(out: Path) -> dict[str, np.ndarray]:
    with np.load(out / "expected.npz") as z:
        return {k: z[k] for k in z.files}


class Checker:
    def __init__(self, label: str):
        self.label, self.failures, self.checks = label, [], 0

    def eq(self, what: str, got, want) -> None:
        self.checks += 1
        got, want = np.asarray(got), np.asarray(want)
        if got.shape != want.shape or not np.array_equal(got, want):
            self.failures.append(
                f"{what}: got shape {got.shape} {got.ravel()[:6]}, want {want.shape} {want.ravel()[:6]}"
            )

    def finish(self) -> None:
        if self.failures:
            print(f"[{self.label}] FAILED {len(self.failures)} of {self.checks} checks:")
            for f in self.failures:
                print("   ", f)
            sys.exit(1)
        print(f"[{self.label}] OK: {self.checks} checks passed")


# ---------------------------------------------------------------------------- project venv
def write(out: Path) -> None:
    from curation.formats.rlds_write import write_rlds
    from schemas import Episode, FrameRef, episode_id_for

    rng = np.random.default_rng(7)
    eps, exp = [], {}
    for i, t in enumerate(LENGTHS):
        high_THWC = rng.integers(0, 256, (t, H, W, 3), dtype=np.uint8)
        wrist_THWC = rng.integers(0, 256, (t, H, W, 3), dtype=np.uint8)
        ep = Episode(
            episode_id=episode_id_for("check", "mem", i),
            source="check",
            embodiment="metaworld_sawyer",
            instruction=f"open the drawer {i}",
            fps=80.0 if i != 1 else 12.5,
            state=rng.normal(size=(t, 4)).astype(np.float32),
            action=rng.uniform(-1, 1, (t, 4)).astype(np.float32),
            timestamps=np.arange(t) / (80.0 if i != 1 else 12.5),
            cameras={
                "high": FrameRef(kind="inline", array=high_THWC),
                "wrist": FrameRef(kind="inline", array=wrist_THWC),
            },
        )
        eps.append(ep)
        exp.update(
            {f"action{i}": ep.action, f"state{i}": ep.state, f"high{i}": high_THWC, f"wrist{i}": wrist_THWC}
        )
        exp[f"instruction{i}"] = np.array(ep.instruction)
        exp[f"fps{i}"] = np.array(ep.fps)
    exp["n"] = np.array(len(eps))
    root = write_rlds(eps, out / "ours", dataset_name=NAME, shards=2)
    np.savez(out / "expected.npz", **exp)
    print(f"[write] {len(eps)} episodes ({', '.join(map(str, LENGTHS))} steps) -> {root}")
    for p in sorted(root.iterdir()):
        print(f"    {p.name:45s} {p.stat().st_size:8d} bytes")


def read_native(out: Path) -> None:
    from curation.formats.mapping import SourceMapping
    from curation.formats.rlds import RLDSReader
    from curation.frames import decode_frames

    exp = _expected(out)
    root = out / "native" / "gwp_native" / "1.0.0"
    mapping = SourceMapping(
        embodiment="metaworld_sawyer",
        cameras={"steps/observation/image": "high", "steps/observation/wrist_image": "wrist"},
        state_key="steps/observation/state",
        action_key="steps/action",
        source="gwp_native",
    )
    reader = RLDSReader(root, mapping=mapping)
    refs = reader.list_episodes()
    c = Checker("our reader on TFDS-written data")
    c.eq("episode count", len(refs), int(exp["n"]))
    by_instruction = {str(exp[f"instruction{i}"]): i for i in range(int(exp["n"]))}
    for ref in refs:
        ep = reader.load(ref)
        i = by_instruction.get(ep.instruction)  # TFDS shuffles records by key hash
        if i is None:
            c.failures.append(f"unexpected instruction {ep.instruction!r}")
            continue
        c.eq(f"ep{i} steps", ep.length, len(exp[f"action{i}"]))
        c.eq(f"ep{i} action", ep.action, exp[f"action{i}"])
        c.eq(f"ep{i} state", ep.state, exp[f"state{i}"])
        c.eq(f"ep{i} fps", ep.fps, float(exp[f"fps{i}"]))
        c.eq(f"ep{i} high frames", decode_frames(ep.cameras["high"]), exp[f"high{i}"])
        c.eq(f"ep{i} wrist frames", decode_frames(ep.cameras["wrist"]), exp[f"wrist{i}"])
    c.finish()


# ---------------------------------------------------------------------------- TF venv
def verify(out: Path) -> None:
    import tensorflow_datasets as tfds

    exp = _expected(out)
    root = out / "ours" / NAME / "1.0.0"
    builder = tfds.builder_from_directory(str(root))
    c = Checker("tfds.builder_from_directory on our data")
    c.eq("split names", sorted(builder.info.splits.keys()), ["train"])
    c.eq("num examples", builder.info.splits["train"].num_examples, int(exp["n"]))
    ds = builder.as_dataset(split="train", shuffle_files=False)
    n = 0
    for i, episode in enumerate(tfds.as_numpy(ds)):
        n += 1
        steps = list(episode["steps"])  # a nested tf.data.Dataset, as RLDS defines
        t = len(exp[f"action{i}"])
        c.eq(f"ep{i} steps", len(steps), t)
        c.eq(f"ep{i} action", np.stack([s["action"] for s in steps]), exp[f"action{i}"])
        c.eq(f"ep{i} state", np.stack([s["observation"]["state"] for s in steps]), exp[f"state{i}"])
        c.eq(f"ep{i} high image", np.stack([s["observation"]["image"] for s in steps]), exp[f"high{i}"])
        c.eq(
            f"ep{i} wrist image", np.stack([s["observation"]["wrist_image"] for s in steps]), exp[f"wrist{i}"]
        )
        instr = {s["language_instruction"].decode() for s in steps}
        c.eq(f"ep{i} instruction", sorted(instr), [str(exp[f"instruction{i}"])])
        c.eq(f"ep{i} is_first", [bool(s["is_first"]) for s in steps], [k == 0 for k in range(t)])
        c.eq(f"ep{i} is_last", [bool(s["is_last"]) for s in steps], [k == t - 1 for k in range(t)])
        c.eq(f"ep{i} fps", episode["episode_metadata"]["fps"], np.float32(exp[f"fps{i}"]))
    c.eq("episodes iterated", n, int(exp["n"]))
    print(f"    features: {builder.info.features}".replace("\n", "\n    "))
    c.finish()
    _write_native(out, exp, tfds)


def _write_native(out: Path, exp: dict[str, np.ndarray], tfds) -> None:
    """The same episodes written by TFDS itself, for the reverse check."""
    count = int(exp["n"])

    class GwpNative(tfds.core.GeneratorBasedBuilder):
        VERSION = tfds.core.Version("1.0.0")

        def _info(self):
            img = tfds.features.Image(shape=(H, W, 3), dtype=np.uint8, encoding_format="png")
            step = {
                "observation": {
                    "image": img,
                    "wrist_image": img,
                    "state": tfds.features.Tensor(shape=(4,), dtype=np.float32),
                },
                "action": tfds.features.Tensor(shape=(4,), dtype=np.float32),
                "is_first": tfds.features.Scalar(dtype=np.bool_),
                "is_last": tfds.features.Scalar(dtype=np.bool_),
                "language_instruction": tfds.features.Text(),
            }
            meta = {"fps": tfds.features.Scalar(dtype=np.float32)}
            features = tfds.features.FeaturesDict(
                {"steps": tfds.features.Dataset(step), "episode_metadata": meta}
            )
            return tfds.core.DatasetInfo(builder=self, features=features)

        def _split_generators(self, dl_manager):
            return {"train": self._generate_examples()}

        def _generate_examples(self):
            for i in range(count):
                t = len(exp[f"action{i}"])
                steps = [
                    {
                        "observation": {
                            "image": exp[f"high{i}"][k],
                            "wrist_image": exp[f"wrist{i}"][k],
                            "state": exp[f"state{i}"][k],
                        },
                        "action": exp[f"action{i}"][k],
                        "is_first": k == 0,
                        "is_last": k == t - 1,
                        "language_instruction": str(exp[f"instruction{i}"]),
                    }
                    for k in range(t)
                ]
                yield f"episode_{i}", {"steps": steps, "episode_metadata": {"fps": float(exp[f"fps{i}"])}}

    builder = GwpNative(data_dir=str(out / "native"))
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(verify_ssl=False))
    print(f"[tfds] wrote the reference dataset to {out / 'native'}")


if __name__ == "__main__":
    commands = {"write": write, "verify": verify, "read-native": read_native}
    if len(sys.argv) != 3 or sys.argv[1] not in commands:
        sys.exit(f"usage: {sys.argv[0]} {{{'|'.join(commands)}}} OUTDIR")
    commands[sys.argv[1]](Path(sys.argv[2]))
