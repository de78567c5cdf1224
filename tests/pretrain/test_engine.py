"""DeepSpeed engine and training loop on a tiny stand-in model (CPU, fp32, gloo).

The stand-in is any ``nn.Module`` with a loss function, as the trainer promises: a two-layer
MLP regressing a fixed linear map (tests/support/train_standin.py, shared with the reliability
test), with input noise drawn from the global torch RNG so that an exact resume also proves the RNG states were restored. Multi-process runs go through the real
``deepspeed --num_gpus 2 --module tests.pretrain.test_engine`` launcher on CPU, with this file as the
worker module.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from pretrain import distributed as dd
from pretrain.checkpoint import COMPLETE, checkpoint_root, read_latest
from pretrain.ema import EMA
from pretrain.engine import (
    DS_SHM_DIR,
    DS_SHM_PREFIX,
    deepspeed_config,
    deepspeed_shm_name,
    export_weights,
    lr_multiplier,
    resolve_precision,
)
from pretrain.run_config import TrainConfig, get_train_config, train_config_names
from pretrain.trainer import METRICS_FILE, RUN_CONFIG_FILE, Trainer
from tests.support.train_standin import D, StandIn, SynthLoader, standin_config

ROOT = Path(__file__).resolve().parents[2]


def loss_fn(engine, batch):
    x = batch["x"] + 0.01 * torch.randn_like(batch["x"])  # global RNG
    loss = torch.mean((engine(x) - batch["y"]) ** 2)
    return loss, {"mse": loss.detach()}


def run(cfg: TrainConfig, init_seed: int = 0, stop_at: int | None = None) -> tuple[Trainer, list[dict]]:
    torch.manual_seed(init_seed)
    model = StandIn()
    tr = Trainer(
        model, loss_fn, SynthLoader(cfg.batch_size, dd.env_rank(), dd.env_world_size()), cfg, progress=False
    )
    return tr, tr.fit(stop_at=stop_at).history


def losses(history: list[dict]) -> dict[int, float]:
    return {h["step"]: h["loss"] for h in history}


# --------------------------------------------------------------------------- config


def test_train_config_validation_names_field_and_choices():
    with pytest.raises(ValueError, match=r"zero_stage must be one of \[0, 1, 2, 3\], got 4"):
        TrainConfig(zero_stage=4)
    with pytest.raises(ValueError, match=r"precision must be one of \['auto', 'bf16', 'fp32'\], got 'fp16'"):
        TrainConfig(precision="fp16")
    with pytest.raises(ValueError, match="ema_decay"):
        TrainConfig(ema_decay=1.0)
    with pytest.raises(ValueError, match="offload_optimizer"):
        TrainConfig(zero_stage=0, offload_optimizer=True)
    with pytest.raises(KeyError, match="did you mean 'debug'"):
        get_train_config("debgu")
    with pytest.raises(ValueError, match="did you mean 'grad_clip'"):
        TrainConfig.from_dict({"grad_clipp": 1.0})
    assert {"debug", "small", "wan22-5b"} <= set(train_config_names())
    cfg = get_train_config("wan22-5b")
    assert TrainConfig.from_dict(json.loads(cfg.to_json())) == cfg


def test_deepspeed_config_and_schedule():
    cfg = TrainConfig(zero_stage=3, offload_optimizer=True, batch_size=2, grad_accum=4, grad_clip=0.5)
    ds = deepspeed_config(cfg, world_size=8, precision="bf16")
    assert ds["train_batch_size"] == 2 * 4 * 8 and ds["gradient_clipping"] == 0.5
    assert (
        ds["zero_optimization"]["stage"] == 3
        and ds["zero_optimization"]["offload_optimizer"]["device"] == "cpu"
    )
    assert ds["bf16"]["enabled"] and ds["optimizer"]["type"] == "AdamW"
    assert "optimizer" not in deepspeed_config(TrainConfig(), 1, "fp32")  # client torch optimizer
    cpu = torch.device("cpu")
    assert resolve_precision(TrainConfig(precision="auto"), cpu) == "fp32"
    with pytest.raises(ValueError, match="bf16"):
        resolve_precision(TrainConfig(precision="bf16"), cpu)
    c = TrainConfig(lr=1.0, warmup_steps=4, steps=14, min_lr_ratio=0.1)
    assert [lr_multiplier(c, s) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert lr_multiplier(c, 9) == pytest.approx(0.55) and lr_multiplier(c, 14) == pytest.approx(0.1)


# --------------------------------------------------------------------------- single process


@pytest.mark.parametrize("stage", [0, 1, 2])
def test_zero_stage_trains(tmp_path, stage):
    cfg = standin_config(tmp_path, zero_stage=stage, steps=30, ckpt_every=0, ema_decay=0.0)
    _, hist = run(cfg)
    first, last = sum(h["loss"] for h in hist[:5]) / 5, sum(h["loss"] for h in hist[-5:]) / 5
    assert last < 0.5 * first, (first, last)
    assert all(h["grad_norm"] is not None and h["grad_norm"] > 0 for h in hist)
    assert hist[0]["lr"] == pytest.approx(cfg.lr * 0.5) and hist[-1]["lr"] < cfg.lr
    lines = [json.loads(ln) for ln in (tmp_path / METRICS_FILE).read_text().splitlines()]
    assert [r["step"] for r in lines] == list(range(1, 31)) and lines[-1]["loss"] == hist[-1]["loss"]
    rec = json.loads((tmp_path / RUN_CONFIG_FILE).read_text())
    assert rec["train"]["zero_stage"] == stage and rec["deepspeed"]["zero_optimization"]["stage"] == stage
    assert rec["precision"] == "fp32" and rec["backend"] == "gloo"
    assert read_latest(checkpoint_root(tmp_path)) == "step_00000030"


def test_resume_matches_uninterrupted_and_export(tmp_path):
    full_tr, full = run(standin_config(tmp_path / "full"))
    part_cfg = standin_config(tmp_path / "part")
    _, first = run(part_cfg, stop_at=6)
    assert read_latest(checkpoint_root(tmp_path / "part")) == "step_00000006"
    # a fresh engine from different initial weights: everything must come from the checkpoint
    resumed_tr, second = run(part_cfg, init_seed=99)
    assert [h["step"] for h in second] == list(range(7, 13))
    want, got = losses(full), losses(first + second)
    assert got.keys() == want.keys()
    for s in want:
        assert abs(got[s] - want[s]) < 1e-5, (s, got[s], want[s])
    assert abs(second[0]["lr"] - full[6]["lr"]) < 1e-12
    lines = [json.loads(ln) for ln in (tmp_path / "part" / METRICS_FILE).read_text().splitlines()]
    assert [r["step"] for r in lines] == list(range(1, 13))

    # EMA: updated every step, differs from the raw weights, restored exactly on resume
    ema_full, ema_res = full_tr.te.ema, resumed_tr.te.ema
    assert ema_full.updates == ema_res.updates == 12
    for n, p in full_tr.te.module.named_parameters():
        assert not torch.allclose(ema_full.shadow[n], p.detach())
        assert torch.allclose(ema_full.shadow[n], ema_res.shadow[n], atol=1e-6)
    client = torch.load(
        checkpoint_root(tmp_path / "part") / "step_00000006" / "mp_rank_00_model_states.pt",
        weights_only=False,
    )
    assert client["ema"]["updates"] == 6

    # export: EMA weights (default) and raw weights (zero_to_fp32 over the final ZeRO-2 checkpoint)
    ema_file = load_file(str(tmp_path / "full" / "final" / "model.safetensors"))
    assert set(ema_file) == {"fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias", "scale"}
    for n, t in ema_file.items():
        ref = ema_full.shadow.get(n, full_tr.te.module.state_dict()[n])
        assert torch.equal(t, ref), n
    raw = export_weights(
        full_tr.te,
        tmp_path / "raw",
        tag_dir=checkpoint_root(tmp_path / "full") / "step_00000012",
        which="raw",
    )
    raw_file = load_file(str(raw))
    for n, t in full_tr.te.module.state_dict().items():
        assert torch.equal(raw_file[n], t), n
    conf = json.loads((tmp_path / "raw" / "config.json").read_text())
    assert conf["train"]["exported_weights"] == "raw" and conf["train"]["config"]["steps"] == 12


def test_corrupt_or_half_written_latest_falls_back(tmp_path):
    _, full = run(standin_config(tmp_path / "full"))
    cfg = standin_config(tmp_path / "run", steps=12)
    run(cfg)
    root = checkpoint_root(tmp_path / "run")
    # a truncated optimizer file in the newest checkpoint → resume from step 6 with a warning
    (root / "step_00000012" / "zero_pp_rank_0_mp_rank_00_optim_states.pt").write_bytes(b"\0" * 10)
    with pytest.warns(RuntimeWarning, match=r"step_00000012.*bytes"):
        _, redo = run(cfg)
    assert [h["step"] for h in redo] == list(range(7, 13))
    for h in redo:
        assert abs(h["loss"] - losses(full)[h["step"]]) < 1e-5
    # same size but garbage inside: passes the size check, fails to load → falls back as well
    states = root / "step_00000012" / "mp_rank_00_model_states.pt"
    states.write_bytes(b"x" * states.stat().st_size)
    with pytest.warns(RuntimeWarning, match=r"step_00000012: failed to load"):
        _, redo2 = run(cfg)
    assert [h["loss"] for h in redo2] == [h["loss"] for h in redo]
    # a checkpoint without its completion marker (crash mid-save) is skipped too
    (root / "step_00000012" / COMPLETE).unlink()
    with pytest.warns(RuntimeWarning, match="half-written"):
        _, again = run(cfg)
    assert again[0]["step"] == 7


def test_ema_partitions_gather_under_zero3(tmp_path):
    cfg = standin_config(tmp_path, zero_stage=3, steps=4, ckpt_every=0)
    tr, _ = run(cfg)
    ema: EMA = tr.te.ema
    assert ema.zero3 and ema.updates == 4
    full = ema.full_state_dict()
    assert full["fc1.weight"].shape == (32, D)
    exported = load_file(str(tmp_path / "final" / "model.safetensors"))
    assert all(torch.equal(exported[n], full[n]) for n in full)


@pytest.mark.slow  # the first run compiles DeepSpeed's cpu_adam op (slowly: minutes on a busy box)
def test_optimizer_offload_trains_and_resumes(tmp_path):
    _, full = run(standin_config(tmp_path / "full", offload_optimizer=True, steps=8, ckpt_every=4))
    assert sum(h["loss"] for h in full[-3:]) < sum(h["loss"] for h in full[:3])
    cfg = standin_config(tmp_path / "part", offload_optimizer=True, steps=8, ckpt_every=4)
    tr, first = run(cfg, stop_at=4)
    assert type(tr.te.engine.basic_optimizer).__name__ == "DeepSpeedCPUAdam"
    _, second = run(cfg, init_seed=5)
    for s, v in losses(first + second).items():
        assert abs(v - losses(full)[s]) < 1e-5, s


# --------------------------------------------------------------------------- the real model


@pytest.mark.parametrize("preset", ["debug", "debug-mot"])  # the shared backbone; the action expert
def test_real_model_zero3_activation_checkpointing_resumes(tmp_path, preset):
    from pretrain.config import get_model_config
    from pretrain.flow import FlowConfig, flow_loss, noise_batch
    from pretrain.model import build_model

    mcfg = replace(get_model_config(preset), text_dim=16)
    flow = FlowConfig()
    Bt, K, H, W, L = 2, 2, 4, 4, 3

    class LatentBatches(SynthLoader):
        def __iter__(self):
            while True:
                g = torch.Generator().manual_seed(self.pos)
                self.pos += 1
                yield {
                    "obs_latents": torch.randn(Bt, mcfg.latent_channels, 1, H, W, generator=g),
                    "future_latents": torch.randn(Bt, mcfg.latent_channels, K, H, W, generator=g),
                    "action": torch.randn(Bt, mcfg.chunk, 32, generator=g),
                    "state": torch.randn(Bt, 32, generator=g),
                    "embodiment_id": torch.tensor([0, 3]),
                    "text": torch.randn(Bt, L, mcfg.text_dim, generator=g),
                }

    def pretrain_loss(engine, b):
        nb = noise_batch(flow, future_BCKHW=b["future_latents"])  # global RNG
        out = engine(
            b["obs_latents"],
            future_latent_BCKHW=nb.video_noisy_BCKHW,
            sigma_video_B=nb.sigma_video_B,
            state_B32=b["state"],
            embodiment_id_B=b["embodiment_id"],
            actions_BP32=b["action"],
            text_BLD=b["text"],
            mode="pretrain",
        )
        fl = flow_loss(
            flow, video_pred_BCKHW=out.video_velocity_BCKHW, video_target_BCKHW=nb.video_target_BCKHW
        )
        return fl.total, {"video": fl.video}

    def go(out: Path, seed: int, stop_at: int | None = None):
        cfg = standin_config(out, zero_stage=3, activation_checkpointing=True, lr=1e-3, steps=6, ckpt_every=3)
        torch.manual_seed(seed)
        model = build_model(mcfg)
        tr = Trainer(
            model,
            pretrain_loss,
            LatentBatches(Bt),
            cfg,
            config_record={"model": mcfg.__dict__},
            progress=False,
        )
        assert model.activation_checkpointing
        return tr, tr.fit(stop_at=stop_at).history

    _, full = go(tmp_path / "full", 0)
    _, first = go(tmp_path / "part", 0, stop_at=3)
    _, second = go(tmp_path / "part", 1)
    for s, v in losses(first + second).items():
        assert abs(v - losses(full)[s]) < 1e-5, s
    exported = load_file(str(tmp_path / "full" / "final" / "model.safetensors"))
    assert set(exported) == set(build_model(mcfg, "meta").state_dict())
    rec = json.loads((tmp_path / "full" / "final" / "config.json").read_text())
    assert rec["model"]["dim"] == mcfg.dim and rec["train"]["config"]["zero_stage"] == 3


# --------------------------------------------------------------------------- two processes


def test_two_process_zero2_zero3_resume_over_gloo(tmp_path):
    env = {
        **os.environ,
        "TORCH_EXTENSIONS_DIR": os.environ.get("TORCH_EXTENSIONS_DIR", str(ROOT / ".torch_extensions")),
        "PYTHONPATH": str(ROOT),
        "OMP_NUM_THREADS": "1",
    }
    port = dd.free_port()
    cmd = [
        str(Path(sys.executable).with_name("deepspeed")),
        "--num_gpus", "2",
        "--master_port", str(port),
        "--module", "tests.pretrain.test_engine",  # the launcher rejects "-m"; "--module" is its spelling
        "--out", str(tmp_path),
    ]  # fmt: skip
    proc = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    # DeepSpeed's CPU all-reduce made one 69 MB /dev/shm segment per rank; each rank unlinked
    # its own after the comm init (release_deepspeed_cpu_shm), so none outlives the run
    leaked = sorted(p.name for p in DS_SHM_DIR.glob(f"{DS_SHM_PREFIX}_*_{port}_*"))
    assert not leaked, leaked
    shm = json.loads((tmp_path / "shm.json").read_text())
    assert shm == {"names_gone_while_running": True, "sums": [3.0] * 4}, shm
    for stage in (2, 3):
        res = json.loads((tmp_path / f"result_stage{stage}.json").read_text())
        assert res["world_size"] == 2
        full, resumed = res["full"], res["resumed"]
        assert full.keys() == resumed.keys() and len(full) == 8
        for s in full:
            assert abs(full[s] - resumed[s]) < 1e-5, (stage, s, full[s], resumed[s])
        a = load_file(str(tmp_path / f"s{stage}_full" / "final" / "model.safetensors"))
        b = load_file(str(tmp_path / f"s{stage}_part" / "final" / "model.safetensors"))
        raw = load_file(str(tmp_path / f"s{stage}_raw" / "model.safetensors"))
        gathered = torch.load(tmp_path / f"gathered_stage{stage}.pt")
        assert a.keys() == b.keys() == raw.keys()
        for n in a:
            assert torch.allclose(a[n], b[n], atol=1e-6), (stage, n)
            assert torch.equal(raw[n], gathered[n]), (stage, n)
        ranks = sorted(
            p.name for p in (tmp_path / f"s{stage}_part" / "checkpoints" / "step_00000008").iterdir()
        )
        assert "trainer_rank00000.pt" in ranks and "trainer_rank00001.pt" in ranks


def _worker(out: Path) -> None:
    """One rank of the two-process test (run by the deepspeed launcher)."""
    import deepspeed

    dd.init_distributed("gloo")
    for stage in (2, 3):
        cfg = standin_config(out / f"s{stage}_full", zero_stage=stage, steps=8, ckpt_every=4, batch_size=2)
        tr, full = run(cfg)
        export_weights(
            tr.te,
            out / f"s{stage}_raw",
            tag_dir=checkpoint_root(cfg.output_dir) / "step_00000008",
            which="raw",
        )
        params = list(tr.te.module.parameters())
        with deepspeed.zero.GatheredParameters(params, modifier_rank=None, enabled=stage == 3):
            gathered = {n: t.detach().float().clone() for n, t in tr.te.module.state_dict().items()}
        pcfg = replace(cfg, output_dir=str(out / f"s{stage}_part"))
        _, first = run(pcfg, stop_at=4)
        _, second = run(pcfg, init_seed=7)
        if dd.is_main():
            torch.save(gathered, out / f"gathered_stage{stage}.pt")
            res = {"world_size": dd.world_size(), "full": losses(full), "resumed": losses(first + second)}
            (out / f"result_stage{stage}.json").write_text(json.dumps(res))
        dd.barrier()
    # each rank's segment name is gone while it runs, and DeepSpeed's shm all-reduce still works
    # on the mappings (fp32 takes its shm kernel where the CPU has AVX2, else the gloo fallback);
    # a small and a large tensor: the kernel has a separate path above 1 MB
    gone = dd.all_agree(not (DS_SHM_DIR / deepspeed_shm_name(dd.rank())).exists(), torch.device("cpu"))
    sums = []
    for n in (1 << 10, 1 << 19):
        t = torch.full((n,), float(dd.rank() + 1))
        deepspeed.comm.inference_all_reduce(t)
        sums += [t.min().item(), t.max().item()]
    if dd.is_main():
        (out / "shm.json").write_text(json.dumps({"names_gone_while_running": gone, "sums": sums}))


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--local_rank", type=int, default=0)  # passed by the deepspeed launcher; env wins
    _worker(ap.parse_args().out)


def test_world_of_one_retries_when_its_free_port_is_taken():
    """The port picked for a world of one can be taken before the store binds it (a Ray worker
    did, in the demo): init picks another instead of failing."""
    script = """
import os, socket
from pretrain import distributed as dd
busy = socket.socket(); busy.bind(("127.0.0.1", 0)); busy.listen()
taken = busy.getsockname()[1]
ports = iter([taken])
real = dd.free_port
dd.free_port = lambda: next(ports, None) or real()
for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
    os.environ.pop(k, None)
info = dd.init_distributed("gloo", timeout_s=30)
assert info.world_size == 1 and os.environ["MASTER_PORT"] != str(taken), os.environ["MASTER_PORT"]
print("ok", taken, os.environ["MASTER_PORT"])
"""
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "MASTER_PORT")}
    done = subprocess.run([sys.executable, "-c", script], cwd=Path(__file__).resolve().parents[2],
                          capture_output=True, text=True, timeout=120, env=env)  # fmt: skip
    assert done.returncode == 0 and "ok" in done.stdout, done.stderr[-2000:]
