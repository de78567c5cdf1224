"""Pretraining end to end: objective, CLI, golden loss curve, learning, 2-process ZeRO-2/3 resume.

Data: a tiny curated shard folder built here with curation's own pure stages
(``curation.in_memory.curate_in_memory``: windows → composed 64² PNG frames → statistics →
normalised shards → hashed instruction tokens → manifest; no Ray) from the deterministic
simulated episodes of ``tests.support.helpers.make_episodes`` — 15 samples, debug curation geometry
(P = 8 actions, K = 2 future frames). The learning test uses real Meta-World expert rollouts.

Golden loss curve: ``tests/support/assets/pretrain_debug_losses.json`` holds the first 20 losses of
``python -m pipelines.pretrain --preset debug`` (train preset ``debug``: fp32, ZeRO-2, AdamW,
lr 1e-3, EMA 0.9, batch 2, seed 0) on that folder, one process, one thread. Regenerate it with::

    python -m tests.pretrain.test_pretrain --regenerate-golden

Tolerance 2e-4 relative. Everything is fixed (seeds, data order, RNG draw order, fp32, one
thread), so on one machine and torch build a rerun is bit-identical (checked when the file was
made); across CPUs and torch builds the BLAS/oneDNN kernels may sum in another order (~1e-7
relative per op), which 20 AdamW steps grow to at most ~1e-5. Any change to the model, the
objective, the data order or the RNG use moves the curve by > 1e-2 from the first step.

``--init``: a tiny random diffusers ``WanTransformer3DModel`` of the debug geometry, saved
with ``save_pretrained``, must be what the run starts from (with the Wan VAE as codec: a tiny
random ``AutoencoderKLWan`` of Wan2.2's layout); with the pixel codec it is refused.

Two processes: ``deepspeed --num_gpus 2`` on CPU (gloo). One launch of this module's worker runs
the uninterrupted reference and a run stopped at step 3 (``--stop-at``, checkpointed) for
ZeRO-2 and ZeRO-3 through ``pipelines.pretrain.main``; then ``deepspeed --module
pipelines.pretrain`` resumes each stopped run in fresh processes. The resumed curves must equal
the uninterrupted ones to 1e-5.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from curation.in_memory import curate_in_memory
from pipelines import pretrain
from pretrain import distributed as dd
from pretrain.codec import PixelPatchCodec
from pretrain.config import get_model_config
from pretrain.data import LoaderConfig, ShardLoader
from pretrain.engine import DS_SHM_DIR, DS_SHM_PREFIX
from pretrain.model import build_model
from pretrain.objective import ObjectiveConfig, PretrainObjective, sample_future
from tests.support.helpers import make_episodes

ROOT = Path(__file__).resolve().parents[2]
GOLDEN = ROOT / "tests" / "support" / "assets" / "pretrain_debug_losses.json"
GOLDEN_RTOL = 2e-4
LENGTHS = (24, 30, 20)
GOLDEN_ARGS = ["--preset", "debug", "--steps", "20", "--no-progress", "--threads", "1"]
RESUME_ARGS = ["--preset", "debug", "--steps", "6", "--ckpt-every", "3", "--batch-size", "2"]
RESUME_ARGS += ["--no-progress", "--threads", "1"]


def build_synthetic_shards(out: Path) -> Path:
    return curate_in_memory(make_episodes(LENGTHS, size=64), out)


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    return build_synthetic_shards(tmp_path_factory.mktemp("pretrain") / "shards")


def read_metrics(run: Path) -> list[dict]:
    return [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines() if ln.strip()]


def first_batch(shards: Path, batch_size: int = 4) -> dict:
    return next(iter(ShardLoader(shards, LoaderConfig(batch_size=batch_size, shuffle=False))))


def debug_model(seed: int = 0):
    torch.manual_seed(seed)
    return build_model(replace(get_model_config("debug"), chunk=8, num_future=2)).eval()


# ---------------------------------------------------------------- the objective


def test_actions_present_follows_mask_and_dropout(shards):
    batch = first_batch(shards)
    codec = PixelPatchCodec(4)
    keep_all = PretrainObjective(ObjectiveConfig(action_dropout=0.0), codec, 512)
    assert keep_all.actions_present(batch).tolist() == [True] * 4
    human = dict(batch, action_mask=batch["action_mask"].clone())
    human["action_mask"][1] = False  # a sample without actions (human video)
    assert keep_all.actions_present(human).tolist() == [True, False, True, True]
    drop_all = PretrainObjective(ObjectiveConfig(action_dropout=1.0), codec, 512)
    assert not drop_all.actions_present(batch).any()
    many = {"action_mask": torch.ones(4000, 32, dtype=torch.bool)}
    half = PretrainObjective(ObjectiveConfig(action_dropout=0.3), codec, 512)
    kept = half.actions_present(many, torch.Generator().manual_seed(0)).float().mean().item()
    assert abs(kept - 0.7) < 0.03
    with pytest.raises(ValueError, match="action_dropout"):
        ObjectiveConfig(action_dropout=1.5)


def test_loss_is_video_flow_mse_and_actions_condition_only_kept_samples(shards):
    batch = first_batch(shards)
    model = debug_model()
    obj = PretrainObjective(ObjectiveConfig(action_dropout=0.0), PixelPatchCodec(4), model.cfg.text_dim)
    obs, fut = obj.latents(batch)
    assert obs.shape == (4, 48, 1, 16, 16) and fut.shape == (4, 48, 2, 16, 16)
    torch.testing.assert_close(PixelPatchCodec(4).decode(fut), batch["future_frames"])

    def per_sample(b: dict) -> torch.Tensor:
        """Per-sample video MSE with the objective's own draws (dropout, σ, ε) from one seed."""
        g = torch.Generator().manual_seed(5)
        present = obj.actions_present(b, g)
        from pretrain.flow import add_noise, sample_sigma

        sigma = sample_sigma(4, obj.cfg.flow.video_shift, g)
        eps = torch.randn(fut.shape, generator=g)
        out = model(obs, add_noise(fut, eps, sigma), sigma_video_B=sigma, mode="pretrain",
                    actions_present_B=present, **obj.conditioning(b))  # fmt: skip
        return ((out.video_velocity_BCKHW - (eps - fut)) ** 2).mean(dim=(1, 2, 3, 4))

    with torch.no_grad():
        loss, parts = obj.loss(model, batch, torch.Generator().manual_seed(5))
        base = per_sample(batch)
        assert loss.item() == pytest.approx(base.mean().item(), rel=1e-6)
        assert parts["actions_kept"].item() == 1.0 and parts["video_loss"].item() == pytest.approx(
            loss.item()
        )

        # sample 1 is human video (no valid action dim): its actions must not reach its video
        human = dict(batch, action_mask=batch["action_mask"].clone(), action=batch["action"].clone())
        human["action_mask"][1] = False
        h0 = per_sample(human)
        human["action"][1] = torch.randn_like(human["action"][1]) * 3
        h1 = per_sample(human)
        assert torch.equal(h0[1], h1[1])
        # ... while sample 0 keeps its actions, and they do change its prediction
        human["action"][0] = torch.randn_like(human["action"][0]) * 3
        h2 = per_sample(human)
        assert not torch.allclose(h1[0], h2[0]) and torch.equal(h1[1], h2[1])

        # the dropped sample's video is exactly the unconditioned model's (no action tokens at all)
        g = torch.Generator().manual_seed(1)
        with_hidden = sample_future(model, obj, human, num_steps=2, generator=g)
        alone = {k: (v[1:2] if isinstance(v, torch.Tensor) else v) for k, v in human.items()}
        g = torch.Generator().manual_seed(1)
        noise_all = torch.randn(fut.shape, generator=g)
        cond = obj.conditioning(alone)
        cond.pop("actions_BP32")
        from pretrain.flow import euler_sample, sigma_schedule

        ref = euler_sample(
            lambda x, s: model(obs[1:2], x, sigma_video_B=s, mode="pretrain", **cond).video_velocity_BCKHW,
            noise_all[1:2],
            sigma_schedule(2, obj.cfg.flow.video_shift),
        )
        torch.testing.assert_close(with_hidden[1:2], ref, rtol=1e-5, atol=1e-5)


def test_residual_objective_learns_the_change_from_the_observation(shards):
    """``video_residual``: the head predicts the clean (future − observation) latents, the loss is
    their MSE, and the sampler turns the prediction into a velocity and adds the observation back,
    so a zero head samples the observation repeated from any noise."""
    from pretrain.flow import sample_sigma

    batch = first_batch(shards)
    model = debug_model()
    for p in model.video_out.proj.parameters():
        torch.nn.init.zeros_(p)
    cfg = ObjectiveConfig(action_dropout=0.0)
    residual = PretrainObjective(cfg, PixelPatchCodec(4), model.cfg.text_dim, video_residual=True)
    absolute = PretrainObjective(cfg, PixelPatchCodec(4), model.cfg.text_dim)
    obs, fut = residual.latents(batch)
    with torch.no_grad():
        for obj in (residual, absolute):
            loss, _ = obj.loss(model, batch, torch.Generator().manual_seed(2))
            g = torch.Generator().manual_seed(2)
            obj.actions_present(batch, g)
            sample_sigma(4, cfg.flow.video_shift, g)
            eps = torch.randn(fut.shape, generator=g)
            target = fut - obs if obj is residual else eps - fut
            assert loss.item() == pytest.approx((target**2).mean().item(), rel=1e-6)
        r = sample_future(model, residual, batch, num_steps=3, generator=torch.Generator().manual_seed(4))
        a = sample_future(model, absolute, batch, num_steps=3, generator=torch.Generator().manual_seed(4))
    torch.testing.assert_close(r, obs.expand_as(fut), rtol=0, atol=1e-5)
    torch.testing.assert_close(a, torch.randn(fut.shape, generator=torch.Generator().manual_seed(4)))


# ---------------------------------------------------------------- the CLI: golden curve and export


def run_golden(shards: Path, out: Path) -> list[float]:
    assert pretrain.main([*GOLDEN_ARGS, "--data", str(shards), "--out", str(out)]) == 0
    return [h["loss"] for h in read_metrics(out)]


@pytest.fixture(scope="module")
def golden_run(shards, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("golden") / "run"
    run_golden(shards, out)
    return out


def test_golden_loss_curve(golden_run):
    want = json.loads(GOLDEN.read_text())
    got = [h["loss"] for h in read_metrics(golden_run)]
    assert len(got) == len(want["losses"]) == 20
    for step, (g, w) in enumerate(zip(got, want["losses"], strict=True), start=1):
        assert abs(g - w) <= GOLDEN_RTOL * abs(w), f"step {step}: loss {g!r}, golden {w!r}"
    assert np.mean(got[-5:]) < np.mean(got[:5])


def test_run_record_and_export_load_for_finetune(golden_run, shards, tmp_path):
    from pipelines import finetune
    from policy.model import load_backbone

    rec = json.loads((golden_run / "run_config.json").read_text())
    assert rec["model"]["name"] == "debug" and rec["model"]["chunk"] == 8 and rec["model"]["num_future"] == 2
    assert rec["objective"]["action_dropout"] == 0.1 and rec["codec"] == {
        "name": "pixel",
        "patch": 4,
        "latent_grid": [16, 16],
    }
    assert rec["train"]["name"] == "debug" and rec["train"]["zero_stage"] == 2 and rec["world_size"] == 1
    assert rec["tokens_per_sample"] == 1 + 8 + 3 * 64 and rec["data"]["rows"] == 15

    final = golden_run / "final"
    cfg, sd = load_backbone(final)
    assert cfg == replace(get_model_config("debug"), chunk=8, num_future=2)
    assert set(sd) == set(build_model(cfg, "meta").state_dict())
    assert json.loads((final / "config.json").read_text())["train"]["exported_weights"] == "ema"
    # the pretraining export is a fine-tuning init, as is
    out = tmp_path / "policy"
    argv = ["--preset", "debug", "--init", str(final), "--data", str(shards), "--out", str(out)]
    assert finetune.main([*argv, "--steps", "2", "--ckpt-every", "0", "--no-progress"]) == 0
    policy_sd = load_file(str(out / "final" / "model.safetensors"))
    assert policy_sd["transformer.video_in.weight"].shape == sd["video_in.weight"].shape


def test_cli_errors_are_clear(shards, tmp_path, capsys):
    def one_line_error(argv: list[str]) -> str:
        try:
            code = pretrain.main(argv)
        except SystemExit as exit_:  # argparse
            code = exit_.code
        err = capsys.readouterr().err.strip()
        assert code == 2 and len(err.splitlines()) == 1 and err.startswith("gwp pretrain: error: "), err
        return err

    assert "--vae" in one_line_error(["--data", str(shards), "--out", str(tmp_path), "--codec", "wan-vae"])
    assert "not divisible by the 'pixel' codec's spatial factor 3" in one_line_error(
        ["--data", str(shards), "--out", str(tmp_path), "--codec-patch", "3"]
    )
    assert "did you mean 'debug'" in one_line_error(
        ["--preset", "debgu", "--data", str(shards), "--out", "x"]
    )
    assert "did you mean 'head_dim'" in one_line_error(
        ["--data", str(shards), "--out", str(tmp_path), "--model-override", "headdim=32"]
    )


def test_init_from_a_diffusers_wan_checkpoint(shards, tmp_path, capsys):
    from diffusers import AutoencoderKLWan, WanTransformer3DModel

    from tests.pretrain.wan_tiny import WAN22_VAE

    torch.manual_seed(3)
    debug = get_model_config("debug")
    wan = WanTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=debug.heads, attention_head_dim=debug.head_dim,
        in_channels=48, out_channels=48, text_dim=debug.text_dim, freq_dim=debug.freq_dim,
        ffn_dim=debug.ffn_dim, num_layers=debug.layers, cross_attn_norm=True,
        qk_norm="rms_norm_across_heads", eps=1e-6,
    )  # fmt: skip
    wan.save_pretrained(tmp_path / "wan")
    AutoencoderKLWan(**WAN22_VAE).save_pretrained(tmp_path / "vae")
    out = tmp_path / "run"
    # Wan weights on raw pixel patches (48 channels either way): refused, saying what to use
    code = pretrain.main(["--data", str(shards), "--out", str(out), "--init", str(tmp_path / "wan")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "use --codec wan-vae --vae" in err, err
    argv = ["--data", str(shards), "--out", str(out), "--init-wan", str(tmp_path / "wan"), "--steps", "2"]
    argv += ["--codec", "wan-vae", "--vae", str(tmp_path / "vae")]
    argv += ["--lr", "1e-9", "--ema-decay", "0", "--ckpt-every", "0", "--no-progress", "--threads", "1"]
    assert pretrain.main(argv) == 0
    init = json.loads((out / "run_config.json").read_text())["init"]
    assert init["source"] == str(tmp_path / "wan") and init["loaded"] > 0
    assert init["fresh"] and all(
        k.startswith(("state_in.", "action_in.", "action_out.")) for k in init["fresh"]
    )
    exported = load_file(str(out / "final" / "model.safetensors"))  # two steps at lr 1e-9: still Wan's
    torch.testing.assert_close(
        exported["video_in.weight"], wan.patch_embedding.weight.detach(), atol=1e-6, rtol=0
    )
    torch.testing.assert_close(exported["blocks.1.ffn.2.weight"], wan.blocks[1].ffn.net[2].weight.detach(),
                               atol=1e-6, rtol=0)  # fmt: skip


# ---------------------------------------------------------------- learning on Meta-World


def test_video_loss_falls_on_metaworld_rollouts(tmp_path):
    from benchmarks.pretrain_learning import metaworld_episodes

    data = curate_in_memory(metaworld_episodes(4, tasks=("drawer-open-v3", "reach-v3")), tmp_path / "mw")
    out = tmp_path / "run"
    argv = ["--preset", "debug", "--data", str(data), "--out", str(out), "--steps", "80", "--batch-size", "4"]
    argv += ["--lr", "2e-3", "--warmup-steps", "5", "--ckpt-every", "0", "--no-progress", "--threads", "1"]
    # the settings of benchmarks/pretrain_learning.py: 4×4-pixel tokens (48 values, within the
    # width of 64) and 32-dim heads (5 RoPE frequencies per image axis instead of 2)
    argv += ["--codec-patch", "2", "--model-override", "heads=2", "--model-override", "head_dim=32"]
    assert pretrain.main(argv) == 0
    video = [h["video_loss"] for h in read_metrics(out)]
    first, last = float(np.mean(video[:10])), float(np.mean(video[-10:]))
    assert last < 0.5 * first, (first, last)


# ---------------------------------------------------------------- two processes, ZeRO-2 and ZeRO-3


def _launch(module: str, args: list[str]) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "TORCH_EXTENSIONS_DIR": os.environ.get("TORCH_EXTENSIONS_DIR", str(ROOT / ".torch_extensions")),
        "PYTHONPATH": str(ROOT),
        "OMP_NUM_THREADS": "1",
    }
    port = dd.free_port()
    cmd = [str(Path(sys.executable).with_name("deepspeed")), "--num_gpus", "2"]
    cmd += ["--master_port", str(port), "--module", module, *args]
    proc = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    # no 69 MB DeepSpeed CPU all-reduce segment of this run is left in RAM (release_deepspeed_cpu_shm)
    leaked = sorted(p.name for p in DS_SHM_DIR.glob(f"{DS_SHM_PREFIX}_*_{port}_*"))
    assert not leaked, leaked
    return proc


@pytest.mark.slow  # two launches of two DeepSpeed processes each
def test_deepspeed_two_processes_zero2_zero3_resume_exactly(shards, tmp_path):
    _launch("tests.pretrain.test_pretrain", ["--worker", "--data", str(shards), "--out", str(tmp_path)])
    for stage in (2, 3):
        part = tmp_path / f"s{stage}_part"
        assert not (part / "final").exists()  # stopped at step 3, as a preempted job
        assert [h["step"] for h in read_metrics(part)] == [1, 2, 3]
        # a fresh launch of the real CLI resumes it
        _launch("pipelines.pretrain", [*RESUME_ARGS, "--zero-stage", str(stage), "--data", str(shards),
                                       "--out", str(part)])  # fmt: skip
        full, resumed = read_metrics(tmp_path / f"s{stage}_full"), read_metrics(part)
        assert [h["step"] for h in resumed] == [h["step"] for h in full] == list(range(1, 7))
        for a, b in zip(full, resumed, strict=True):
            assert abs(a["loss"] - b["loss"]) < 1e-5, (stage, a["step"], a["loss"], b["loss"])
        rec = json.loads((part / "run_config.json").read_text())
        assert rec["world_size"] == 2 and rec["deepspeed"]["zero_optimization"]["stage"] == stage
        ckpt = part / "checkpoints" / "step_00000006"
        assert (ckpt / "trainer_rank00000.pt").is_file() and (ckpt / "trainer_rank00001.pt").is_file()
        a = load_file(str(tmp_path / f"s{stage}_full" / "final" / "model.safetensors"))
        b = load_file(str(part / "final" / "model.safetensors"))
        assert a.keys() == b.keys()
        for n in a:
            torch.testing.assert_close(a[n], b[n], rtol=0, atol=1e-6)


def _worker(data: Path, out: Path) -> None:
    """One rank of the launch above: uninterrupted and stopped runs for ZeRO-2 and ZeRO-3."""
    for stage in (2, 3):
        common = [*RESUME_ARGS, "--zero-stage", str(stage), "--data", str(data)]
        pretrain.main([*common, "--out", str(out / f"s{stage}_full")])
        pretrain.main([*common, "--out", str(out / f"s{stage}_part"), "--stop-at", "3"])


def _regenerate_golden() -> None:
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        data = build_synthetic_shards(Path(tmp) / "shards")
        losses = run_golden(data, Path(tmp) / "run")
        again = run_golden(data, Path(tmp) / "run2")
    if losses != again:
        raise SystemExit(f"two identical runs differ: {losses} vs {again}; not writing {GOLDEN}")
    GOLDEN.parent.mkdir(parents=True, exist_ok=True)
    record = {
        "description": "losses of steps 1..20 of `python -m pipelines.pretrain` with the debug presets on the "
        "synthetic shard folder of tests/pretrain/test_pretrain.py (fp32 CPU, one process, one thread)",
        "command": [
            "python",
            "-m",
            "pipelines.pretrain",
            *GOLDEN_ARGS,
            "--data",
            "<shards>",
            "--out",
            "<run>",
        ],
        "episodes": list(LENGTHS),
        "torch": torch.__version__,
        "losses": losses,
    }
    GOLDEN.write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {GOLDEN}: {losses[0]:.5f} → {losses[-1]:.5f}")


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--regenerate-golden", action="store_true")
    ap.add_argument("--worker", action="store_true")
    ap.add_argument("--data", type=Path)
    ap.add_argument("--out", type=Path)
    ap.add_argument("--local_rank", type=int, default=0)  # passed by the deepspeed launcher; env wins
    cli = ap.parse_args()
    if cli.regenerate_golden:
        _regenerate_golden()
    elif cli.worker:
        _worker(cli.data, cli.out)
    else:
        ap.error("give --regenerate-golden or --worker")
