"""Closed-loop evaluator, baselines, reports and CLI on Meta-World push-v3 at 64², short episodes.

Two env pools are shared by the module (inline and 2 spawned workers) so that simulators and
processes start once. Random rollouts are compared frame by frame (contact-sheet frames of
every episode), so a seeding bug shows even though random never succeeds.
"""

from __future__ import annotations

import time

import numpy as np
import pytest

from pipelines import evaluate as cli
from policy.baselines import ExpertPolicy, RandomPolicy
from policy.eval_metrics import wilson_interval
from policy.eval_report import compare, contact_sheet, load_result, write_comparison, write_report
from policy.eval_workers import EnvWorkers
from policy.evaluate import EVAL_SEED_BASE, TRAIN_SEED_LIMIT, EvalConfig, eval_seed, evaluate, query_seed

TASK = "push-v3"  # the expert needs ~62 steps at these seeds
SIZE, MAX_STEPS = 64, 80


def _cfg(**kw) -> EvalConfig:
    base = dict(
        tasks=(TASK,), episodes=4, image_size=SIZE, max_steps=MAX_STEPS, replan_every=8, videos_per_task=1
    )
    return EvalConfig(**(base | kw))


@pytest.fixture(scope="module")
def pool1():
    with EnvWorkers(1, (TASK,), SIZE, MAX_STEPS) as pool:
        yield pool


@pytest.fixture(scope="module")
def pool2():
    with EnvWorkers(2, (TASK,), SIZE, MAX_STEPS) as pool:
        yield pool


@pytest.fixture(scope="module")
def expert_runs(pool1, pool2, tmp_path_factory):
    videos = tmp_path_factory.mktemp("expert_videos")
    one = evaluate(ExpertPolicy(), _cfg(workers=1), video_dir=videos, workers=pool1)
    two = evaluate(ExpertPolicy(), _cfg(workers=2), workers=pool2)
    return one, two


class _Unbatched:
    """RandomPolicy without predict_action_batch: exercises the reseed path, and is slow on purpose."""

    name = "random-unbatched"

    def __init__(self):
        self.inner = RandomPolicy(seed=12345)  # the initial seed must not matter: every query is reseeded

    def reseed(self, seed: int) -> None:
        self.inner.reseed(seed)

    def predict_action(self, observation):
        assert set(observation) == {"images", "state", "instruction", "embodiment"}  # nothing privileged
        for role in ("high", "wrist"):
            img = observation["images"][role]
            assert img.shape == (SIZE, SIZE, 3) and img.dtype == np.uint8 and img.std() > 5
        time.sleep(0.002)
        return self.inner.predict_action(observation)


@pytest.fixture(scope="module")
def random_runs(pool1, pool2):
    cfg = _cfg(episodes=2, videos_per_task=1)  # episode 1 is not recorded: renders at queries only
    batched = evaluate(RandomPolicy(), cfg, workers=pool1)
    unbatched = evaluate(_Unbatched(), cfg, workers=pool1)
    parallel = evaluate(RandomPolicy(), _cfg(episodes=2, videos_per_task=1, workers=2), workers=pool2)
    return batched, unbatched, parallel


def _numbers(result):
    return [(e.task, e.env_seed, e.success, e.length, e.queries, e.final_state) for e in result.episodes]


def test_wilson_interval_known_values():
    assert wilson_interval(0, 10) == pytest.approx((0.0, 0.27753), abs=1e-4)
    assert wilson_interval(5, 10) == pytest.approx((0.23659, 0.76341), abs=1e-4)
    assert wilson_interval(10, 10)[1] == pytest.approx(1.0)
    assert wilson_interval(0, 0) == (0.0, 1.0)
    with pytest.raises(ValueError):
        wilson_interval(3, 2)


def test_eval_seeds_are_disjoint_from_training_and_deterministic():
    seeds = {eval_seed(s, i) for s in range(3) for i in range(50)}
    assert len(seeds) == 150 and min(seeds) >= EVAL_SEED_BASE > TRAIN_SEED_LIMIT
    assert eval_seed(0, 0) == 10**9 and eval_seed(2, 7) == 10**9 + 2 * 10**5 + 7
    with pytest.raises(ValueError):
        eval_seed(-1, 0)
    with pytest.raises(ValueError):
        eval_seed(10**6, 0)  # past uint32
    assert query_seed(TASK, 10**9, 3) == query_seed(TASK, 10**9, 3)
    assert len({query_seed(TASK, 10**9, t) for t in range(20)} | {query_seed("reach-v3", 10**9, 3)}) == 21


def test_config_is_validated():
    with pytest.raises(ValueError, match="did you mean 'push-v3'"):
        EvalConfig(tasks=("psh-v3",))
    with pytest.raises(ValueError, match="duplicate"):
        EvalConfig(tasks=(TASK, TASK))
    with pytest.raises(ValueError, match="replan_every"):
        EvalConfig(replan_every=0)
    with pytest.raises(ValueError, match="max_steps"):
        EvalConfig(max_steps=501)


def test_expert_succeeds(expert_runs):
    one, _ = expert_runs
    assert one.success_rate >= 0.8
    assert [e.env_seed for e in one.episodes] == [eval_seed(0, i) for i in range(4)]
    ok = [e for e in one.episodes if e.success]
    assert all(20 < e.length < MAX_STEPS for e in ok)
    assert one.tasks[TASK].ci95[0] < one.success_rate <= one.tasks[TASK].ci95[1]
    # chunk of 1 from the expert: one query per step
    assert all(e.queries == e.length for e in one.episodes)
    assert (
        one.episodes_per_s > 0
        and one.env_steps_per_s > 0
        and one.latency_ms["p95"] >= one.latency_ms["p50"] > 0
    )


def test_parallel_workers_reproduce_one_worker(expert_runs):
    one, two = expert_runs
    assert _numbers(one) == _numbers(two)
    assert one.success_rate == two.success_rate and one.ci95 == two.ci95


def test_random_fails_and_is_reproducible_across_paths_and_workers(random_runs):
    batched, unbatched, parallel = random_runs
    for r in random_runs:
        assert r.success_rate == 0.0
        assert all(e.length == MAX_STEPS and e.queries == MAX_STEPS // 8 for e in r.episodes)
        assert len(r.sheet) == 1
    assert _numbers(batched) == _numbers(unbatched) == _numbers(parallel)  # final states included
    a, b, c = (r.sheet[0].frames_NHWC for r in random_runs)
    assert np.array_equal(a, b) and np.array_equal(a, c)  # the recorded trajectory, pixel for pixel
    assert not np.array_equal(a[0], a[-1])  # the arm moved
    first, second = batched.episodes
    assert first.final_state != second.final_state  # different seeds, different runs
    assert unbatched.latency_ms["p50"] >= 2.0  # measured around the policy call
    assert batched.policy_calls == batched.chunks == 2 * MAX_STEPS // 8


def test_bad_policy_output_is_explained(pool1, pool2, random_runs):
    class Wrong:
        def predict_action(self, observation):
            return np.zeros((5, 7))

    class NaN:
        def predict_action(self, observation):
            return np.full((5, 4), np.nan)

    with pytest.raises(ValueError, match=r"shape \(5, 7\).*\[p, 4\]"):
        evaluate(Wrong(), _cfg(episodes=1), workers=pool1)
    with pytest.raises(ValueError, match="non-finite"):
        evaluate(NaN(), _cfg(episodes=1), workers=pool1)
    with pytest.raises(ValueError, match="non-finite"):  # both workers have an episode in flight
        evaluate(NaN(), _cfg(episodes=2, workers=2), workers=pool2)
    # the shared pool was drained: it still reproduces the earlier parallel run
    again = evaluate(RandomPolicy(), _cfg(episodes=2, videos_per_task=1, workers=2), workers=pool2)
    assert _numbers(again) == _numbers(random_runs[2])
    with pytest.raises(ValueError, match="does not fit"):
        evaluate(RandomPolicy(), _cfg(max_steps=50), workers=pool1)
    with pytest.raises(TypeError, match="predict_action"):
        evaluate(object(), _cfg(), workers=pool1)


def test_reports(expert_runs, random_runs, tmp_path):
    from PIL import Image

    from curation.video import probe_video

    expert, random_ = expert_runs[0], random_runs[0]
    paths = write_report(expert, tmp_path / "expert")
    for key in ("json", "markdown", "html", "contact_sheet"):
        assert paths[key].is_file() and paths[key].stat().st_size > 0
    with Image.open(paths["contact_sheet"]) as img:
        img.load()
        assert img.format == "PNG" and img.width > 6 * SIZE * 2 and img.height > 96
        pixels = np.asarray(img.convert("RGB"))
    assert pixels.std() > 10  # frames, not a blank canvas
    rec = load_result(tmp_path / "expert")
    assert rec["successes"] == expert.successes and rec["tasks"][TASK]["episodes"] == 4
    assert rec["episodes"][0]["env_seed"] == eval_seed(0, 0)
    md = paths["markdown"].read_text()
    assert "![contact sheet](contact_sheet.png)" in md and f"| {TASK} |" in md and "videos/" not in md
    video = expert.episodes[0].video
    assert video and probe_video(video).num_frames == expert.episodes[0].length + 1

    table = compare([expert, random_])
    assert "| expert | **" in table and "| random | 0.0 %" in table
    assert "Not comparable:** the runs differ in episodes" in table  # 4 vs 2 episodes
    assert "Not comparable" not in compare([expert, expert_runs[1]])  # workers may differ
    out = write_comparison([expert, random_], tmp_path)
    assert out["markdown"].read_text().count("| random |") == 1
    with pytest.raises(ValueError, match="no recorded rollouts"):
        contact_sheet([], tmp_path / "x.png")


def test_cli_errors(capsys):
    assert cli.main(["--policy", "expert", "--tasks", "psh-v3", "--out", "/tmp/unused"]) == 2
    assert "did you mean 'push-v3'" in capsys.readouterr().err
    assert cli.main(["--policy", "/no/such/policy", "--tasks", TASK, "--out", "/tmp/unused"]) == 2
    assert "--policy /no/such/policy: no such folder" in capsys.readouterr().err
    assert cli.parse_policy_spec("novideo=org/model") == ("novideo", "org/model")
    assert cli.parse_policy_spec("runs/a=b") == (None, "runs/a=b")


def test_cli_end_to_end(tmp_path, capsys):
    argv = [
        "--policy",
        "expert",
        "--policy",
        "rnd=random",
        "--env",
        "metaworld",
        "--tasks",
        TASK,
        "--episodes",
        "1",
    ]
    argv += ["--seed", "2", "--replan-every", "4", "--max-steps", "70", "--image-size", str(SIZE)]
    argv += ["--workers", "1", "--videos-per-task", "1", "--out", str(tmp_path), "--no-progress"]
    assert cli.build_parser().parse_args(argv).replan_every == 4
    assert cli.main(argv) == 0
    for name in ("expert", "rnd"):
        rec = load_result(tmp_path / name)
        assert rec["policy"] == name and rec["episodes"][0]["env_seed"] == eval_seed(2, 0)
        assert (tmp_path / name / "contact_sheet.png").is_file()
    assert (
        load_result(tmp_path / "expert")["successes"] == 1 and load_result(tmp_path / "rnd")["successes"] == 0
    )
    assert "| rnd |" in (tmp_path / "comparison.md").read_text()


def test_gwp_policy_with_random_weights_runs_deterministically(pool1, pool2):
    """The real policy class (debug transformer, random weights) through the harness, W = 1 and 2."""
    import dataclasses

    import torch

    from policy import Policy
    from policy.model import GWPPolicyModel, PolicyConfig
    from pretrain.config import get_model_config
    from schemas import DimStats, EmbodimentStats, get_embodiment

    def dims(n: int) -> DimStats:
        t = lambda a: tuple(float(v) for v in a)  # noqa: E731
        lo, hi = np.full(n, -0.5), np.full(n, 0.5)
        return DimStats(t((lo + hi) / 2), t(hi - lo), t(lo - 1), t(hi + 1), t(lo), t(hi), 100)

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(0)
        spec = get_embodiment("metaworld_sawyer")
        cfg = PolicyConfig(model=dataclasses.replace(get_model_config("debug"), chunk=8), embodiments=(spec,))
        model = GWPPolicyModel(cfg)
        model.norm_stats = {
            spec.name: EmbodimentStats(spec.name, dims(spec.action_dim), dims(spec.state_dim))
        }
        gwp = Policy(model)
        one = evaluate(gwp, _cfg(episodes=2, videos_per_task=0), name="gwp", workers=pool1)
        two = evaluate(gwp, _cfg(episodes=2, videos_per_task=0, workers=2), name="gwp", workers=pool2)
    finally:
        torch.set_num_threads(threads)
    assert _numbers(one) == _numbers(two)
    assert all(e.queries == MAX_STEPS // 8 for e in one.episodes if not e.success)
    assert one.chunks == sum(e.queries for e in one.episodes) and one.latency_ms["p50"] > 0
