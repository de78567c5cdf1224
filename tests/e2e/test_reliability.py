"""Reliability: bad input, crashes, restarts, concurrent jobs, bad configs and Hub faults lose nothing.

Every scenario injects a fault and checks the outcome the toolkit promises; each check is
also recorded (``tests/support/faults.py:Recorder``) so that ``python -m benchmarks.reliability``
can print the table ``RELIABILITY.md`` from a real run of this file.

* **Bad input** — the fault corpus of ``tests/support/faults.py`` (broken videos, parquet columns,
  HDF5 lengths, NaN/inf, empty, unknown embodiment, non-UTF-8 text, an unreadable file)
  mixed with good episodes in three formats. One uninterrupted in-process run is the
  reference for the whole module; a watcher thread lists ``data/`` every few milliseconds
  during it and reads every shard the moment its final name appears.
* **Crashes** — the driver of ``python -m pipelines.curate`` (in-process Ray) and the driver
  of a ``ray job submit`` job on a ``ray start --head`` cluster are killed with SIGKILL in
  phase 2; a rerun must give shards byte-identical to the reference. A training process is
  killed mid-run; resuming continues the reference loss curve, also when the newest
  checkpoint is then corrupted (it falls back to the one before, with a warning).
* **Concurrency** — while a job holds an output folder, a second job on it refuses at once.
* **Configs** — every ``gwp`` command rejects a bad value naming the field and the allowed
  values; a misspelt preset or command gets a "did you mean".
* **Hub** — 5xx answers are retried with doubling back-off; 4xx answers fail at once.

The Ray cluster started here uses its own ports and temp folder and is torn down by killing
only the processes that carry that folder in their command line: never ``ray stop``, which
would kill every Ray process on the machine.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import io
import itertools
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from curation.pipeline import job_from_dict, run
from curation.shards import OutputLockedError, content_digest, file_sha256
from tests.support.faults import Recorder, build_fault_corpus, load_as_user, make_permission_source
from tests.support.hub_fixture import hub_env, hub_server  # noqa: F401  (pytest fixtures)

ROOT = Path(__file__).resolve().parents[2]
REC = Recorder()
ENV = {**os.environ, "RAY_AUTH_MODE": "disabled", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}


# ---- shared corpus and reference run -----------------------------------------------------------


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("faults")
    sources, faults, good = build_fault_corpus(root)
    return {"sources": sources, "faults": faults, "good": good, "root": root}


def job_dict(corpus, out: Path) -> dict:
    return {
        "sources": [str(p) for p in corpus["sources"].values()],
        "out": str(out),
        # synthetic frames are smooth: a lower blur bar keeps the good ones; small shards: several files
        "curation": {
            "preset": "debug",
            "filters": {"min_sharpness": 1.0},
            "shards": {"target_bytes": 60_000},
        },
        "run": {"progress": False, "num_cpus": 2, "episodes_per_task": 1},
    }


def write_job(corpus, out: Path) -> Path:
    path = out.parent / f"{out.name}.json"
    path.write_text(json.dumps(job_dict(corpus, out)))
    return path


class FolderWatch(threading.Thread):
    """Lists ``out/data`` and ``out/meta`` every 2 ms; reads each shard as soon as its name appears."""

    def __init__(self, out: Path) -> None:
        super().__init__(daemon=True)
        self.out, self.stop_flag = out, threading.Event()
        self.seen: dict[str, dict] = {}  # shard name -> first sight
        self.manifest_saw: list[str] | None = None  # shard names present when the manifest appeared
        self.polls = 0

    def run(self) -> None:
        data, manifest = self.out / "data", self.out / "meta" / "manifest.json"
        while not self.stop_flag.is_set():
            self.polls += 1
            names = sorted(p.name for p in data.glob("shard-*.parquet")) if data.is_dir() else []
            for name in names:
                if name not in self.seen:
                    blob = (data / name).read_bytes()
                    try:
                        rows = pq.ParquetFile(io.BytesIO(blob)).metadata.num_rows
                    except Exception as err:  # a partial file under its final name
                        rows = f"unreadable: {err}"
                    self.seen[name] = {"rows": rows, "sha256": _sha(blob)}
            if self.manifest_saw is None and manifest.exists():
                self.manifest_saw = names
            time.sleep(0.002)


def _sha(blob: bytes) -> str:
    import hashlib

    return hashlib.sha256(blob).hexdigest()


@pytest.fixture(scope="module")
def reference(corpus, ray_local, tmp_path_factory):
    out = tmp_path_factory.mktemp("reference") / "ds"
    watch = FolderWatch(out)
    watch.start()
    manifest = run(job_from_dict(job_dict(corpus, out)))
    time.sleep(0.05)
    watch.stop_flag.set()
    watch.join()
    return {"out": out, "manifest": manifest, "watch": watch}


def shard_hashes(out: Path) -> dict[str, str]:
    return {p.name: file_sha256(p) for p in sorted((out / "data").glob("shard-*.parquet"))}


# ---- bad input ------------------------------------------------------------------------------------


def test_every_bad_item_is_in_the_ledger_with_file_and_reason(corpus, reference):
    m = reference["manifest"]
    episode_rej = [r for r in m.rejections if r.window < 0]
    failures = []
    for fault in corpus["faults"]:
        hits = [r for r in episode_rej if r.path == fault.path and fault.episode in r.episode]
        match = [r for r in hits if r.reason in fault.reasons and fault.detail in r.detail]
        observed = "; ".join(f"{r.stage}/{r.reason}: {r.detail[:90]}" for r in hits) or "no ledger entry"
        ok = len(match) >= 1
        REC.add(
            "bad input",
            fault.name,
            fault.injected,
            f"rejected ({' or '.join(fault.reasons)}), ledger names {Path(fault.path).name}",
            observed,
            ok,
        )
        if not ok:
            failures.append((fault.name, observed))
    assert not failures, failures
    # every ledger entry is one of the injected faults: nothing good was rejected as a side effect
    injected = {f.path for f in corpus["faults"]}
    assert {r.path for r in episode_rej} <= injected
    assert len(episode_rej) == len(corpus["faults"])
    # the good episodes, among them the parquet with an extra column, all became samples
    good = m.counts["episodes_with_samples"]
    extra = next(s for s in m.sources if s.path.endswith("lerobot_v2"))
    REC.add(
        "bad input",
        "parquet with an extra column only",
        "episode parquet with an extra 'gripper_temp' column",
        "accepted (unknown columns ignored)",
        f"{good}/{corpus['good']} good episodes gave samples; lerobot_v2 source: {extra.episodes} inputs",
        good == corpus["good"],
    )
    assert good == corpus["good"]


def test_counts_balance_stage_by_stage(corpus, reference):
    m = reference["manifest"]
    c, sc = m.counts, m.stage_counts
    ok = c["episodes_in"] == c["episodes_with_samples"] + c["episodes_rejected"]
    ok &= c["windows_in"] == c["samples"] + c["windows_rejected"]
    ok &= all(k["in"] == k["out"] + k["rejected"] for k in sc.values())
    chain = ["ingest", "filter", "dedup", "decode", "window"]
    ok &= all(sc[a]["out"] == sc[b]["in"] for a, b in itertools.pairwise(chain))
    ok &= sc["ingest"]["in"] == c["episodes_in"] == corpus["good"] + len(corpus["faults"])
    ok &= sum(s.episodes for s in m.sources) == c["episodes_in"]
    ok &= (
        c["samples"]
        == sum(s.rows for s in m.shards)
        == sum(
            pq.ParquetFile(p).metadata.num_rows for p in (reference["out"] / "data").glob("shard-*.parquet")
        )
    )
    stages = ", ".join(f"{s} {k['in']}→{k['out']}+{k['rejected']}" for s, k in sc.items())
    REC.add(
        "bad input",
        "accounting",
        f"{len(corpus['faults'])} bad + {corpus['good']} good episodes in 3 formats",
        "in = out + rejected at every stage; out of one stage = in of the next",
        stages,
        ok,
    )
    assert ok, (c, sc)


def test_no_partial_shard_is_ever_visible(reference):
    watch, out = reference["watch"], reference["out"]
    final = shard_hashes(out)
    seen = watch.seen
    bad = {n: s for n, s in seen.items() if not isinstance(s["rows"], int) or s["sha256"] != final.get(n)}
    leftovers = [p.name for p in (out / "data").iterdir() if not p.name.startswith("shard-")]
    ok = (
        set(seen) == set(final)
        and not bad
        and watch.manifest_saw is not None
        and set(watch.manifest_saw) == set(final)
        and not leftovers
    )
    REC.add(
        "bad input",
        "no partial shard visible",
        f"data/ and meta/ listed every 2 ms during the run ({watch.polls} listings)",
        "a shard appears only complete, never changes after; manifest appears after every shard",
        f"{len(seen)} shards seen, each readable at first sight and identical to its final bytes; "
        f"manifest appeared with {len(watch.manifest_saw or [])}/{len(final)} shards present; "
        f"temp files left: {len(leftovers)}",
        ok,
    )
    assert ok, (bad, watch.manifest_saw, leftovers, set(seen) ^ set(final))
    assert len(final) >= 3  # the run really cut several shards


def test_permission_denied_under_an_unprivileged_uid():
    root = make_permission_source()
    try:
        row = load_as_user(root)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    ok = row.get("reason") == "unreadable" and "Permission denied" in row.get("detail", "")
    ok &= row.get("path", "").endswith("episode_000000.json")
    REC.add(
        "bad input",
        "file without read permission (real)",
        "sidecar chmod 000, loaded by a child process after os.setuid(65534)",
        "rejected (unreadable), names the file",
        f"{row.get('reason')}: {row.get('detail', row.get('error', ''))[:110]}",
        ok,
    )
    assert ok, row


# ---- crashes and concurrency of the curation job ----------------------------------------------------


@contextlib.contextmanager
def _process_group(cmd: list[str], **popen_kw) -> Iterator[subprocess.Popen]:
    """``cmd`` in a process group of its own (so what it starts, Ray included, goes with it); the
    group is SIGKILLed and the process reaped on leaving the block, whatever happened in it."""
    proc = subprocess.Popen(cmd, start_new_session=True, **popen_kw)
    try:
        yield proc
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def _wait_for(predicate, timeout: float, proc=None, what: str = "") -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"process exited ({proc.returncode}) before {what}")
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def _parts(out: Path) -> int:
    return len(list((out / ".work" / "parts").glob("part-*.parquet")))


def _complete_shards_only(out: Path) -> bool:
    for p in (out / "data").glob("shard-*.parquet") if (out / "data").is_dir() else []:
        try:
            pq.read_metadata(p)
        except Exception:
            return False
    return True


def test_sigkilled_driver_reruns_to_identical_shards_and_a_second_job_is_refused(
    corpus, reference, tmp_path, monkeypatch
):
    out = tmp_path / "ds"
    cmd = [sys.executable, "-m", "pipelines.curate", "--config", str(write_job(corpus, out))]
    with _process_group(cmd, cwd=ROOT, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) as proc:
        lock = out / ".lock"
        _wait_for(lambda: lock.exists() and lock.read_text().strip(), 120, proc, "the job to take its lock")
        # concurrency: the folder is held; a second job (CLI and in-process) refuses at once
        second = subprocess.Popen(
            cmd, cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        # "at once": one non-blocking try of the lock, never a wait for the running job to end
        locks, real_flock = [], fcntl.flock

        def flock(fd, op):
            locks.append(op)
            return real_flock(fd, op)

        with monkeypatch.context() as mp, pytest.raises(OutputLockedError) as err:
            mp.setattr(fcntl, "flock", flock)
            run(job_from_dict(job_dict(corpus, out)))
        refused_at_once = locks == [fcntl.LOCK_EX | fcntl.LOCK_NB]
        msg = str(err.value)
        cli_out, cli_err = second.communicate(timeout=120)
        cli = subprocess.CompletedProcess(cmd, second.returncode, cli_out, cli_err)
        _wait_for(lambda: _parts(out) >= 1, 240, proc, "the first work part")
        os.killpg(proc.pid, signal.SIGKILL)  # the driver and the local Ray it started
        parts_at_kill = _parts(out)
    assert proc.returncode == -signal.SIGKILL, "the job finished before it could be interrupted"
    lock_ok = f"pid {proc.pid}" in msg and str(out) in msg and refused_at_once
    cli_ok = cli.returncode != 0 and "another curation job" in cli.stderr and "Traceback" not in cli.stderr
    REC.add(
        "concurrency",
        "second job on the same output folder",
        "run() and `gwp curate` started on a folder a running job holds",
        "refused at once, message names the folder and the holder; nothing written",
        f"OutputLockedError after {'one non-blocking lock try' if refused_at_once else f'lock calls {locks}'}: "
        f"{msg[:110]}; CLI exit {cli.returncode}: "
        f"{cli.stderr.strip().splitlines()[-1][:100] if cli.stderr.strip() else ''}",
        lock_ok and cli_ok,
    )
    assert lock_ok, msg
    assert cli_ok, cli.stderr[-2000:]

    no_manifest = not (out / "meta" / "manifest.json").exists()
    clean = _complete_shards_only(out)
    run(job_from_dict(job_dict(corpus, out)))  # the rerun, in this process's Ray
    same = shard_hashes(out) == shard_hashes(reference["out"])
    same_rows = content_digest(out) == content_digest(reference["out"])
    REC.add(
        "crash",
        "curation driver SIGKILL (in-process Ray)",
        f"`python -m pipelines.curate` killed with SIGKILL after {parts_at_kill} of {corpus['good']} work parts",
        "no manifest, no partial shard; rerun resumes and writes shards identical to an uninterrupted run",
        f"manifest absent: {no_manifest}; only complete shards: {clean}; rerun shards byte-identical: {same}",
        no_manifest and clean and same and same_rows,
    )
    assert no_manifest and clean and same and same_rows


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def _pids_with(marker: str) -> list[int]:
    pids = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit() and int(d.name) != os.getpid():
            try:
                if marker.encode() in (d / "cmdline").read_bytes():
                    pids.append(int(d.name))
            except OSError:
                continue
    return pids


@pytest.fixture
def ray_cluster(tmp_path):
    """``ray start --head --block`` on free ports with its own temp folder; torn down by pid."""
    temp = Path(f"/tmp/gwprel{os.getpid()}")  # short: Ray's socket paths must fit in 107 bytes
    gcs, dash, agent, agent_grpc, node, obj, rt, metrics, client = _free_ports(9)
    bindir = Path(sys.executable).parent
    env = {**ENV, "PATH": f"{bindir}{os.pathsep}{os.environ['PATH']}"}
    cmd = [str(bindir / "ray"), "start", "--head", "--block", "--num-cpus", "2", "--port", str(gcs),
           "--dashboard-host", "127.0.0.1", "--dashboard-port", str(dash), "--include-dashboard", "true",
           "--dashboard-agent-listen-port", str(agent), "--dashboard-agent-grpc-port", str(agent_grpc),
           "--node-manager-port", str(node), "--object-manager-port", str(obj),
           "--runtime-env-agent-port", str(rt), "--metrics-export-port", str(metrics),
           "--ray-client-server-port", str(client), "--temp-dir", str(temp), "--disable-usage-stats"]  # fmt: skip
    try:
        with _process_group(cmd, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL):
            yield {"address": f"http://127.0.0.1:{dash}", "env": env, "ray": str(bindir / "ray")}
    finally:
        for _ in range(3):  # services and workers that left the process group, found by our temp dir
            for pid in _pids_with(str(temp)):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.3)
        shutil.rmtree(temp, ignore_errors=True)


def _submit(
    cluster: dict, job_file: Path, *, wait: bool, timeout: float = 150
) -> subprocess.CompletedProcess:
    cmd = [cluster["ray"], "job", "submit", "--address", cluster["address"], "--working-dir", str(ROOT)]
    cmd += [] if wait else ["--no-wait"]
    cmd += ["--", "python", "-m", "pipelines.curate", "--config", str(job_file)]
    deadline, result = time.time() + timeout, None
    while time.time() < deadline:
        result = subprocess.run(cmd, env=cluster["env"], capture_output=True, text=True, cwd=ROOT)
        text = result.stdout + result.stderr
        if result.returncode == 0 or not any(
            s in text for s in ("No available agent", "Connection refused", "Failed to connect", "timed out")
        ):
            break
        time.sleep(2)  # the head or its dashboard agent is still starting
    assert result is not None
    return result


def test_ray_job_driver_sigkilled_then_resubmitted_gives_identical_shards(
    corpus, reference, ray_cluster, tmp_path
):
    out = tmp_path / "ds"
    job_file = write_job(corpus, out)
    first = _submit(ray_cluster, job_file, wait=False)
    assert first.returncode == 0, (first.stdout + first.stderr)[-3000:]
    _wait_for(lambda: _parts(out) >= 1, 240, what="the submitted job's first work part")
    holder = (out / ".lock").read_text().split()
    driver = int(holder[1])  # "pid N on host": the job's driver process, as the lock records it
    parts_at_kill = _parts(out)
    os.kill(driver, signal.SIGKILL)
    _wait_for(lambda: not Path(f"/proc/{driver}").exists(), 30, what="the driver to die")
    no_manifest = not (out / "meta" / "manifest.json").exists()
    clean = _complete_shards_only(out)
    second = _submit(ray_cluster, job_file, wait=True, timeout=400)
    assert second.returncode == 0, (second.stdout + second.stderr)[-4000:]
    resumed = "already done" in second.stdout
    same = shard_hashes(out) == shard_hashes(reference["out"])
    REC.add(
        "crash",
        "curation driver SIGKILL (Ray job)",
        f"`ray job submit` on a `ray start --head` cluster; job driver (pid from .lock) SIGKILLed after "
        f"{parts_at_kill} of {corpus['good']} work parts",
        "resubmitted job resumes; shards identical to an uninterrupted run",
        f"manifest absent after kill: {no_manifest}; only complete shards: {clean}; resumed finished "
        f"parts: {resumed}; shards byte-identical: {same}",
        no_manifest and clean and resumed and same,
    )
    assert no_manifest and clean and resumed and same


# ---- training: kill, resume, corrupt checkpoint -------------------------------------------------------


def train(out: Path, *, sleep_s: float = 0.0):
    """12 steps of a tiny MLP through the real Trainer/DeepSpeed engine; checkpoints every 3 steps."""
    import torch

    from pretrain.trainer import Trainer
    from tests.support.train_standin import StandIn, SynthLoader, standin_config

    torch.set_num_threads(1)

    def loss_fn(engine, b):
        if sleep_s:
            time.sleep(sleep_s)  # slow enough to be killed between checkpoints
        x_BD = b["x"] + 0.05 * torch.randn_like(b["x"])  # global RNG: a resume must restore it
        return torch.mean((engine(x_BD) - b["y"]) ** 2)

    cfg = standin_config(out, ckpt_every=3)
    torch.manual_seed(0)
    return Trainer(StandIn(), loss_fn, SynthLoader(cfg.batch_size), cfg, progress=False).fit()


def _metric_steps(out: Path) -> list[int]:
    p = out / "metrics.jsonl"
    return [json.loads(ln)["step"] for ln in p.read_text().splitlines() if ln.strip()] if p.exists() else []


def test_training_killed_resumes_the_same_curve_and_skips_a_corrupt_checkpoint(tmp_path):
    from pretrain.checkpoint import checkpoint_root, list_tags, read_latest, step_of

    ref = {h["step"]: h["loss"] for h in train(tmp_path / "ref").history}
    killed = tmp_path / "killed"
    train_cmd = [sys.executable, "-m", "tests.e2e.test_reliability", "train", str(killed), "0.4"]
    with _process_group(
        train_cmd, cwd=ROOT, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    ) as proc:
        _wait_for(lambda: max(_metric_steps(killed), default=0) >= 7, 240, proc, "training step 7")
        assert proc.poll() is None
    killed_at = max(_metric_steps(killed))
    latest = read_latest(checkpoint_root(killed))
    assert latest is not None and not (killed / "final").exists()

    # 1) resume from the last checkpoint
    resumed_dir = tmp_path / "resumed"
    shutil.copytree(killed, resumed_dir)
    res = train(resumed_dir)
    got = {h["step"]: h["loss"] for h in res.history}
    worst = max(abs(got[s] - ref[s]) for s in got)
    ok = res.resumed_from == step_of(latest) and sorted(got) == list(range(step_of(latest) + 1, 13))
    ok &= worst < 1e-5 and _metric_steps(resumed_dir) == list(range(1, 13))
    REC.add(
        "crash",
        "training process SIGKILL",
        f"trainer process (DeepSpeed ZeRO-2, CPU) SIGKILLed at step {killed_at} of 12, checkpoints every 3",
        "resume from the last complete checkpoint; same loss curve as an uninterrupted run",
        f"resumed from {latest}, steps {min(got)}–{max(got)}; max |Δloss| vs uninterrupted {worst:.1e}",
        ok,
    )
    assert ok, (res.resumed_from, latest, got, ref)

    # 2) the newest checkpoint corrupted: fall back to the one before, with a warning
    corrupt_dir = tmp_path / "corrupt"
    shutil.copytree(killed, corrupt_dir)
    tags = [
        t
        for t in list_tags(checkpoint_root(corrupt_dir))
        if (checkpoint_root(corrupt_dir) / t / "COMPLETE.json").exists()
    ]
    newest, before = tags[0], tags[1]
    victim = next((checkpoint_root(corrupt_dir) / newest).glob("*optim_states.pt"))
    victim.write_bytes(victim.read_bytes()[:100])  # half-written
    with pytest.warns(RuntimeWarning, match=rf"not the newest.*{newest}") as caught:
        res2 = train(corrupt_dir)
    got2 = {h["step"]: h["loss"] for h in res2.history}
    worst2 = max(abs(got2[s] - ref[s]) for s in got2)
    ok2 = res2.resumed_from == step_of(before) and worst2 < 1e-5 and max(got2) == 12
    warning = str(caught[0].message)
    REC.add(
        "crash",
        "corrupt latest checkpoint",
        f"newest checkpoint {newest}: optimizer file cut to 100 bytes",
        "resume from the checkpoint before, with a warning; same loss curve",
        f"resumed from {before} (step {res2.resumed_from}); warning: {warning[-110:]}; max |Δloss| {worst2:.1e}",
        ok2,
    )
    assert ok2, (res2.resumed_from, before, worst2)


# ---- configs -------------------------------------------------------------------------------------------


def _gwp(argv: list[str], capsys) -> tuple[int, str]:
    from pipelines.cli import main

    try:
        code = main(argv)
    except SystemExit as exit_:  # argparse
        code = exit_.code if isinstance(exit_.code, int) else 1
    captured = capsys.readouterr()
    return code, captured.err + captured.out


BAD_CONFIGS = [
    # (command, argv, what is wrong, fragments the message must contain)
    ("gwp", ["curat"], "misspelt command", ["did you mean 'curate'"]),
    (
        "curate",
        ["--source", "x", "--out", "{tmp}/o", "--preset", "debgu"],
        "unknown preset",
        ["did you mean 'debug'", "known"],
    ),
    (
        "curate",
        ["--config", "{tmp}/bad_tail.json"],
        "windows.tail = 'wrap'",
        ["windows.tail", "['drop', 'pad']"],
    ),
    (
        "curate",
        ["--config", "{tmp}/bad_field.json"],
        "run.workers (no such field)",
        ["run.workers", "allowed"],
    ),
    (
        "pretrain",
        ["--preset", "debgu", "--data", "{tmp}", "--out", "{tmp}/p"],
        "unknown preset",
        ["did you mean 'debug'"],
    ),
    (
        "pretrain",
        ["--zero-stage", "5", "--data", "{tmp}", "--out", "{tmp}/p"],
        "zero_stage = 5",
        ["--zero-stage", "0, 1, 2, 3"],
    ),
    (
        "finetune",
        ["--preset", "smal", "--init", "none", "--data", "{tmp}", "--out", "{tmp}/f"],
        "unknown preset",
        ["did you mean 'small'"],
    ),
    (
        "finetune",
        ["--zero-stage", "5", "--init", "none", "--data", "{tmp}", "--out", "{tmp}/f"],
        "zero_stage = 5",
        ["zero_stage", "[0, 1, 2, 3]"],
    ),
    (
        "finetune",
        ["--codec", "vqgan", "--init", "none", "--data", "{tmp}", "--out", "{tmp}/f"],
        "codec = vqgan",
        ["--codec", "pixel", "wan-vae"],
    ),
    (
        "evaluate",
        ["--policy", "expert", "--env", "gym", "--out", "{tmp}/e"],
        "env = gym",
        ["--env", "metaworld"],
    ),
    (
        "evaluate",
        ["--policy", "expert", "--tasks", "drawer-opn-v3", "--out", "{tmp}/e"],
        "misspelt task",
        ["drawer-opn-v3", "did you mean", "drawer-open-v3"],
    ),
    ("publish", ["datset", "{tmp}", "--repo-id", "a/b"], "kind = datset", ["datset", "dataset", "model"]),
    (
        "publish",
        ["dataset", "{tmp}", "--repo-id", "a/b", "--files-per-commit", "0"],
        "files_per_commit = 0",
        ["--files-per-commit", "≥ 1"],
    ),
    (
        "generate-sim",
        ["--codec", "vp8", "--out", "{tmp}/g"],
        "codec = vp8",
        ["--codec", "av1", "h264", "mpeg4"],
    ),
    ("generate-sim", ["--tasks", "push-v9", "--out", "{tmp}/g"], "unknown task", ["push-v9", "did you mean"]),
]


def test_every_command_rejects_a_bad_config_naming_field_and_choices(tmp_path, capsys):
    (tmp_path / "bad_tail.json").write_text(
        json.dumps(
            {
                "sources": ["x"],
                "out": str(tmp_path / "o"),
                "curation": {"preset": "debug", "windows": {"tail": "wrap"}},
            }
        )
    )
    (tmp_path / "bad_field.json").write_text(
        json.dumps({"sources": ["x"], "out": str(tmp_path / "o"), "run": {"workers": 2}})
    )
    failures = []
    for command, args, wrong, fragments in BAD_CONFIGS:
        argv = ([] if command == "gwp" else [command]) + [a.replace("{tmp}", str(tmp_path)) for a in args]
        code, text = _gwp(argv, capsys)
        lines = [ln for ln in text.strip().splitlines() if ln.strip()]
        message = lines[-1] if lines else ""
        ok = code == 2 and all(f in text for f in fragments) and "Traceback" not in text
        REC.add(
            "config",
            f"gwp {command}" if command != "gwp" else "gwp",
            wrong,
            f"exit 2, message contains {', '.join(repr(f) for f in fragments)}",
            f"exit {code}: {message[:150]}",
            ok,
        )
        if not ok:
            failures.append((argv, code, text[-600:]))
    assert not failures, failures


# ---- Hub faults ----------------------------------------------------------------------------------------


def test_hub_5xx_is_retried_with_backoff_and_4xx_fails_at_once(hub_env, monkeypatch):  # noqa: F811
    import schemas.hub.client as hub

    sleeps: list[float] = []
    monkeypatch.setattr(hub.time, "sleep", lambda s: sleeps.append(s))
    settings = hub.UploadSettings(backoff_s=0.05, retries=4, use_large_folder=False)
    files = {"weights.bin": np.arange(64, dtype=np.float32).tobytes(), "README.md": b"# card\n"}

    repo = hub_env.new_repo_id("rel")
    commit = rf"^POST /api/models/{repo}/commit/"
    hub_env.server.fail_requests(commit, 503, times=2)
    result = hub.upload_files(files, repo, settings=settings)
    statuses = [s for _, _, s in hub_env.server.requests_matching(commit)]
    stored = hub_env.server.files_at(repo)
    ok = (
        statuses == [503, 503, 200]
        and sleeps == [0.05, 0.1]
        and stored["weights.bin"] == files["weights.bin"]
    )
    REC.add(
        "hub",
        "intermittent 5xx",
        "the commit endpoint answers 503 twice",
        "retried with doubling back-off, then committed",
        f"commit statuses {statuses}, back-off sleeps {sleeps} s, commit {result.commit[:10]}, files intact",
        ok,
    )
    assert ok, (statuses, sleeps)

    for status, kind in ((403, hub.HubAuthError), (400, hub.HubError)):
        sleeps.clear()
        repo = hub_env.new_repo_id("rel4xx")
        commit = rf"^POST /api/models/{repo}/commit/"
        hub_env.server.fail_requests(commit, status, times=1)
        with pytest.raises(kind) as err:
            hub.upload_files(files, repo, settings=settings)
        attempts = hub_env.server.requests_matching(commit)
        msg = str(err.value)
        ok = len(attempts) == 1 and not sleeps and f"HTTP {status}" in msg and repo in msg
        REC.add(
            "hub",
            f"{status} answer",
            f"the commit endpoint answers {status} once",
            "fails at once (no retry) with a message naming the repo and the status",
            f"{type(err.value).__name__} after {len(attempts)} attempt(s), {len(sleeps)} sleeps: {msg[:140]}",
            ok,
        )
        assert ok, (attempts, sleeps, msg)
        hub_env.server.clear_faults()


if __name__ == "__main__":  # the training worker killed by the test above
    ap = argparse.ArgumentParser()
    ap.add_argument("what", choices=["train"])
    ap.add_argument("out", type=Path)
    ap.add_argument("sleep_s", type=float)
    a = ap.parse_args()
    train(a.out, sleep_s=a.sleep_s)
