"""Command-line mistakes (issue #15): every ``gwp`` subcommand answers them without a traceback.

Each case runs the real CLI in a subprocess (``python -m pipelines.cli …``), as a user would, and
checks the exit status and stderr:

* a user's mistake (missing or malformed ``--config``, wrong type or unknown field in it, unknown
  preset/model/format/task with the registries' "did you mean", a missing ``--data`` / ``--source``
  / ``--init`` / ``--policy`` folder, a bad flag value) → exit 2 and exactly one line
  ``gwp <command>: error: …`` naming the problem;
* a job with nothing to do (an empty folder, every input rejected) → exit 1, the last line names
  the reason, and the inputs are accounted for (inputs = outputs + rejected, the ledger has them);
* ``gwp --version`` / ``-V`` and the usage line of every subcommand (``usage: gwp <command>``).

The mistakes fail before any heavy work (the training drivers load torch only after the arguments
are checked), so the whole file stays cheap. Every case is recorded as a reliability row
(``tests.support.faults.Recorder``). The last test publishes a dataset twice through the CLI to the local
Hub server and checks that the card's fields survive the second push.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import pytest
import yaml

from tests.support.faults import Recorder

pytest_plugins = ["tests.support.hub_fixture"]  # the `hub_server` / `hub_env` fixtures

ROOT = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "RAY_AUTH_MODE": "disabled", "OMP_NUM_THREADS": "1"}
REC = Recorder()
COMMANDS = (
    "generate-sim",
    "ingest",
    "convert",
    "curate",
    "pretrain",
    "finetune",
    "evaluate",
    "model-info",
    "publish",
    "demo",
    "serve",
)


def gwp(
    argv: list[str], env: dict[str, str] | None = None, timeout: float = 180
) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "pipelines.cli", *argv],
        cwd=ROOT,
        env=env or ENV,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    """Small bad inputs: config files with one defect each, a folder with one broken file, an empty one."""
    root = tmp_path_factory.mktemp("cli")
    made = {
        "bad.json": '{"sources": ["x"], "out": ',  # cut short
        "bad.toml": 'sources = ["x"\nout = "o"\n',  # unclosed array
        "list.json": "[1, 2]",  # not a table
        "wrong_type.json": json.dumps(
            {"sources": ["x"], "out": "o", "curation": {"windows": {"chunk": "eight"}}}
        ),
        "unknown_field.json": json.dumps({"sources": ["x"], "out": "o", "curation": {"windos": {}}}),
    }
    for name, text in made.items():
        (root / name).write_text(text)
    (root / "broken").mkdir()
    (root / "broken" / "episode_0.mp4").write_bytes(b"not a video at all")
    (root / "empty").mkdir()
    return {
        "root": root,
        **{name: root / name for name in made},
        "broken": root / "broken",
        "empty": root / "empty",
    }


# (command, argv, what is wrong, fragments stderr must contain); {root} is the files fixture's folder
MISTAKES = [
    ("gwp", ["curat"], "misspelt command", ["did you mean 'curate'"]),
    ("generate-sim", ["--tasks", "push-v9", "--out", "{root}/g"], "unknown task", ["push-v9", "did you mean 'push-v3'"]),
    ("generate-sim", ["--codec", "vp8", "--out", "{root}/g"], "unknown codec", ["--codec", "vp8", "h264"]),
    ("generate-sim", ["--tasks", "push-v3"], "--out missing", ["--out"]),
    ("ingest", ["{root}/missing"], "missing source", ["{root}/missing", "no such file"]),
    ("ingest", ["--scan", "{root}/missing"], "missing --scan folder", ["{root}/missing", "no such file"]),
    ("ingest", ["--format", "lerobot", "{root}/broken"], "unknown --format", ["did you mean 'lerobot_v3'"]),
    ("convert", ["{root}/missing", "--to", "rlds", "--out", "{root}/c"], "missing source", ["{root}/missing"]),
    ("convert", ["{root}/broken", "--to", "rdls", "--out", "{root}/c"], "unknown --to", ["did you mean 'rlds'"]),
    ("curate", [], "neither --source nor --config", ["--source", "--config"]),
    ("curate", ["--config", "{root}/missing.json"], "missing --config", ["{root}/missing.json", "cannot read"]),
    ("curate", ["--config", "{root}/bad.json"], "malformed JSON", ["{root}/bad.json", "cannot parse"]),
    ("curate", ["--config", "{root}/bad.toml"], "malformed TOML", ["{root}/bad.toml", "cannot parse"]),
    ("curate", ["--config", "{root}/list.json"], "config not a table", ["{root}/list.json", "object/table"]),
    ("curate", ["--config", "{root}/wrong_type.json"], "wrong type", ["windows.chunk", "expected an integer"]),
    ("curate", ["--config", "{root}/unknown_field.json"], "unknown field", ["windos", "did you mean 'windows'"]),
    ("curate", ["--source", "{root}/broken", "--out", "{root}/o", "--preset", "debgu"], "unknown preset",
     ["did you mean 'debug'"]),
    ("curate", ["--source", "{root}/missing", "--out", "{root}/o"], "missing --source", ["--source {root}/missing"]),
    ("curate", ["--source", "{root}/broken", "--out", "{root}/o", "--caption-model", "coca_ViT-B-23"],
     "unknown caption model", ["coca_ViT-B-23", "did you mean 'coca_ViT-B-32'"]),
    ("pretrain", ["--preset", "debgu", "--data", "{root}", "--out", "{root}/p"], "unknown model preset",
     ["did you mean 'debug'"]),
    ("pretrain", ["--train-preset", "dbug", "--data", "{root}", "--out", "{root}/p"], "unknown train preset",
     ["did you mean 'debug'"]),
    ("pretrain", ["--data", "{root}/missing", "--out", "{root}/p"], "missing --data", ["--data {root}/missing"]),
    ("pretrain", ["--data", "{root}/empty", "--out", "{root}/p"], "--data is not a dataset",
     ["--data {root}/empty", "no manifest"]),
    ("pretrain", ["--data", "{root}", "--out", "{root}/p", "--init-wan", "{root}/missing"], "missing --init-wan",
     ["--init {root}/missing"]),
    ("pretrain", ["--data", "{root}", "--out", "{root}/p", "--init", "{root}/missing"], "missing --init",
     ["--init {root}/missing"]),
    ("pretrain", ["--data", "{root}", "--out", "{root}/p", "--model-override", "headdim=32"], "unknown model field",
     ["did you mean 'head_dim'"]),
    ("pretrain", ["--data", "{root}", "--out", "{root}/p", "--model-override", "latent_channels=4"],
     "override of a field the data sets", ["latent_channels is set by the codec"]),
    ("pretrain", ["--data", "{root}", "--out", "{root}/p", "--codec", "wan-vae"], "--codec wan-vae without --vae",
     ["--vae"]),
    ("finetune", ["--preset", "smal", "--init", "none", "--data", "{root}", "--out", "{root}/f"], "unknown preset",
     ["did you mean 'small'"]),
    ("finetune", ["--model", "smal", "--init", "none", "--data", "{root}", "--out", "{root}/f"], "unknown model",
     ["did you mean 'small'"]),
    ("finetune", ["--init", "none", "--data", "{root}/missing", "--out", "{root}/f"], "missing --data",
     ["--data {root}/missing"]),
    ("finetune", ["--init", "{root}/missing", "--data", "{root}", "--out", "{root}/f"], "missing --init",
     ["--init {root}/missing"]),
    ("evaluate", ["--policy", "{root}/missing", "--out", "{root}/e"], "missing --policy",
     ["--policy {root}/missing", "no such folder"]),
    ("evaluate", ["--policy", "expert", "--tasks", "drawer-opn-v3", "--out", "{root}/e"], "unknown task",
     ["did you mean 'drawer-open-v3'"]),
    ("evaluate", ["--policy", "expert", "--env", "gym", "--out", "{root}/e"], "unknown env", ["--env", "metaworld"]),
    ("publish", ["dataset", "{root}/missing", "--repo-id", "a/b"], "missing folder", ["{root}/missing"]),
    ("publish", ["datset", "{root}", "--repo-id", "a/b"], "unknown kind", ["datset", "dataset", "model"]),
    ("demo", ["--preset", "smok", "--out", "{root}/d"], "unknown preset", ["did you mean 'smoke'"]),
]  # fmt: skip


@pytest.mark.parametrize(
    "command,argv,wrong,fragments", MISTAKES, ids=[f"{c}-{w.replace(' ', '_')}" for c, _, w, _ in MISTAKES]
)
def test_a_mistake_is_one_line_and_exit_2(files, command, argv, wrong, fragments):
    root = str(files["root"])
    argv = ([] if command == "gwp" else [command]) + [a.replace("{root}", root) for a in argv]
    fragments = [f.replace("{root}", root) for f in fragments]
    res = gwp(argv)
    lines = res.stderr.strip().splitlines()
    prefix = f"gwp {command}: error: " if command != "gwp" else "gwp: error: "
    ok = (
        res.returncode == 2
        and len(lines) == 1
        and lines[0].startswith(prefix)
        and all(f in lines[0] for f in fragments)
        and "Traceback" not in res.stderr
    )
    shown = lines[-1].replace(root, "<tmp>")[:160] if lines else ""
    REC.add(
        "command line",
        f"gwp {command}" if command != "gwp" else "gwp",
        wrong,
        "exit 2, one line naming it",
        f"exit {res.returncode}, {len(lines)} line(s): {shown}",
        ok,
    )
    assert ok, (res.returncode, res.stderr[-2000:])


@pytest.mark.parametrize("command", COMMANDS)
def test_usage_line_names_gwp_command(command):
    res = gwp([command, "--help"])
    first = res.stdout.splitlines()[0] if res.stdout else ""
    ok = res.returncode == 0 and first.startswith(f"usage: gwp {command}")
    REC.add("command line", f"gwp {command}", "--help", f"usage: gwp {command} …", first[:80], ok)
    assert ok, (res.returncode, res.stdout[:300], res.stderr[-1000:])


@pytest.mark.parametrize("flag", ["--version", "-V"])
def test_version(flag):
    res = gwp([flag])
    assert res.returncode == 0 and res.stdout.strip() == f"gwp {version('gigaworld-policy')}", res


def _last_line(res: subprocess.CompletedProcess) -> str:
    lines = res.stderr.strip().splitlines()
    return lines[-1] if lines else ""


def test_ingest_with_nothing_loaded_fails_with_the_reason(files, tmp_path):
    ledger = tmp_path / "ledger.jsonl"
    cases = {
        "one broken file": (["ingest", str(files["broken"]), "--ledger", str(ledger)], ["no episode loaded"]),
        "empty folder": (["ingest", str(files["empty"])], ["no episode loaded", "unknown_layout"]),
        "--scan of an empty folder": (["ingest", "--scan", str(files["empty"])], ["no dataset found"]),
    }
    failures = []
    for case, (argv, fragments) in cases.items():
        res = gwp(argv)
        last = _last_line(res)
        ok = (
            res.returncode == 1
            and last.startswith("gwp ingest: error: ")
            and all(f in last for f in fragments)
        )
        ok = ok and "Traceback" not in res.stderr
        if case == "one broken file":  # inputs = outputs + rejected: the one input is in the ledger
            summary = json.loads(res.stdout)
            rows = [json.loads(line) for line in ledger.read_text().splitlines()]
            ok = ok and summary["inputs"] == summary["episodes"] + summary["rejected"] == 1
            ok = ok and [(r["path"], r["reason"]) for r in rows] == [(str(files["broken"]), "unknown_layout")]
        REC.add(
            "bad input",
            "gwp ingest: nothing loaded",
            case,
            "exit 1, the reason, the input in the ledger",
            f"exit {res.returncode}: {last.replace(str(files['root']), '<tmp>')[:150]}",
            ok,
        )
        if not ok:
            failures.append((case, res.returncode, res.stdout[-500:], res.stderr[-1000:]))
    assert not failures, failures


def test_convert_with_every_input_rejected_fails_with_the_reason(files, tmp_path):
    out = tmp_path / "out"
    res = gwp(["convert", str(files["broken"]), "--to", "rlds", "--out", str(out)])
    last = _last_line(res)
    ok = (
        res.returncode == 1 and "nothing to convert" in last and "unknown_layout" in last and not out.exists()
    )
    REC.add(
        "bad input",
        "gwp convert: nothing to convert",
        "a folder with one broken file",
        "exit 1 naming the file and its reason, nothing written",
        f"exit {res.returncode}: {last.replace(str(files['root']), '<tmp>')[:150]}",
        ok,
    )
    assert ok, (res.returncode, res.stderr[-1000:])


def test_curate_with_every_input_rejected_fails_with_the_reason_and_keeps_the_ledger(files, tmp_path):
    import pyarrow.parquet as pq

    from curation.shards import LEDGER_PATH, MANIFEST_PATH

    out = tmp_path / "curated"
    res = gwp(
        ["curate", "--source", str(files["broken"]), "--out", str(out), "--preset", "debug", "--no-progress"]
    )
    last = _last_line(res)
    ok = (
        res.returncode == 1
        and last.startswith("gwp curate: error: no sample kept")
        and "unknown_layout" in last
    )
    ok = ok and "Traceback" not in res.stderr
    counts = json.loads((out / MANIFEST_PATH).read_text())["counts"] if (out / MANIFEST_PATH).exists() else {}
    ledger = pq.read_table(out / LEDGER_PATH).to_pylist() if (out / LEDGER_PATH).exists() else []
    ok = (
        ok
        and counts.get("episodes_in") == counts.get("episodes_rejected") == 1
        and counts.get("samples") == 0
    )
    ok = ok and [(r["path"], r["reason"]) for r in ledger] == [(str(files["broken"]), "unknown_layout")]
    REC.add(
        "bad input",
        "gwp curate: every input rejected",
        "a source folder with one broken file",
        "exit 1 with the reasons; manifest 1 in = 0 kept + 1 rejected; ledger names the file",
        f"exit {res.returncode}, counts {counts}: {last.replace(str(files['root']), '<tmp>')[:120]}",
        ok,
    )
    assert ok, (res.returncode, counts, ledger, res.stderr[-2000:])


def test_republishing_a_dataset_keeps_the_card_fields(hub_env, tmp_path):
    from huggingface_hub import HfApi

    from schemas.hub.card import card_header
    from tests.curation.test_hub_publish import make_dataset

    folder = tmp_path / "curated"
    make_dataset(folder, shard_rows=(2,), offset=700)
    repo = hub_env.new_repo_id("card")
    env = {**ENV, **hub_env.environ, "PYTHONPATH": str(ROOT)}

    def publish(*flags: str) -> tuple[subprocess.CompletedProcess, dict]:
        res = gwp(["publish", "dataset", str(folder), "--repo-id", repo, *flags], env=env)
        assert res.returncode == 0, res.stderr[-2000:]
        return res, card_header(hub_env.server.files_at(repo, "dataset")["README.md"].decode())

    _, first = publish("--license", "apache-2.0")
    assert first["license"] == "apache-2.0" and "configs" in first
    # the user edits the card on the Hub: a language, a tag and a nicer name of their own
    edited = {**first, "language": ["en"], "tags": [*first["tags"], "manipulation"], "pretty_name": "Drawers"}
    card = "---\n" + yaml.safe_dump(edited, sort_keys=False) + "---\n\n# hand-edited\n"
    HfApi().upload_file(
        path_or_fileobj=card.encode(), path_in_repo="README.md", repo_id=repo, repo_type="dataset"
    )

    _, second = publish()  # no flags: nothing the user set is lost
    kept = {k: second.get(k) for k in ("license", "language", "pretty_name")}
    ok = kept == {"license": "apache-2.0", "language": ["en"], "pretty_name": "Drawers"}
    ok = (
        ok
        and set(first["tags"]) | {"manipulation"} == set(second["tags"])
        and second["configs"] == first["configs"]
    )
    again, _ = publish()  # the merged card merges to itself: no commit
    ok = ok and "already up to date, no commit" in again.stdout
    _, third = publish("--license", "mit")  # a flag changes its field only
    ok = ok and third["license"] == "mit" and third["language"] == ["en"] and "manipulation" in third["tags"]
    REC.add(
        "hub",
        "gwp publish dataset twice",
        "card edited on the Hub (language, tag, pretty_name) between two pushes",
        "the second push keeps license, tags, language, pretty_name; --license mit changes only the license",
        f"after push 2: {kept}, tags {second['tags']}; after --license mit: license {third['license']}",
        ok,
    )
    assert ok, (first, second, third)
