"""``gwp model-info``: parameters, token groups, attention FLOPs and ZeRO memory of a preset."""

from __future__ import annotations

import json

import pytest

from pipelines import cli
from pretrain.config import get_model_config
from pretrain.model import param_count


def _run(argv, capsys) -> tuple[int, str, str]:
    code = cli.main(["model-info", *argv])
    out = capsys.readouterr()
    return code, out.out, out.err.strip()


def test_wan22_5b_json_has_gwps_token_groups(capsys):
    code, out, _ = _run(["--preset", "wan22-5b", "--json"], capsys)
    assert code == 0
    info = json.loads(out)
    assert info["tokens"] == {"context": 121, "action": 48, "video": 120}
    assert info["tokens_total"] == 289 and info["geometry"] == "clip" and info["latent_grid"] == [20, 24]
    assert info["parameters"]["total"] == param_count(get_model_config("wan22-5b"))
    assert 5.0e9 < info["parameters"]["total"] < 5.3e9
    mem = info["memory_gib_per_gpu"]
    for stage in ("zero1", "zero2", "zero3"):
        row = mem[stage]
        assert row["no_offload+checkpointing"] < row["no_offload"]
        assert row["offload"] < row["no_offload"] and row["offload:host"] > 0
    assert mem["zero3"]["no_offload"] < mem["zero2"]["no_offload"] < mem["zero1"]["no_offload"]
    # attention FLOPs: the block-causal sum, 4·n_q·n_k·D per layer plus cross-attention to 64 tokens
    D, L = 3072, 30
    self_attn = 4 * D * (121 * 121 + 48 * 169 + 120 * 289)
    assert info["flops"]["attention_forward_per_sample"] == L * (self_attn + 4 * 289 * 64 * D)


def test_per_frame_geometry_and_table(capsys):
    code, out, _ = _run(
        ["--preset", "wan22-5b", "--geometry", "per_frame", "--codec", "wan-vae", "--json"], capsys
    )
    assert code == 0 and json.loads(out)["tokens"] == {"context": 121, "action": 48, "video": 480}
    code, out, _ = _run(["--preset", "debug", "--codec", "pixel", "--image", "64x64"], capsys)
    assert code == 0
    assert "tokens: C 65 + A 48 + V 256 = 369" in out and "zero2:" in out and "parameters:" in out


def test_user_mistakes_are_one_line(capsys):
    for argv, want in (
        (["--preset", "wan22-5b", "--codec", "pixel"], "use --codec wan-vae or --geometry per_frame"),
        (["--preset", "wan22-5b", "--image", "380x320"], "multiples of 32"),
        (["--preset", "wan22-5b", "--image", "big"], "expected WIDTHxHEIGHT"),
        (["--preset", "wan22_5b"], "did you mean 'wan22-5b'"),
        (["--preset", "wan22-5b", "--future", "3"], "multiple of 4"),
    ):
        try:
            code = cli.main(["model-info", *argv])
        except SystemExit as exit_:
            code = exit_.code
        err = capsys.readouterr().err.strip()
        assert code == 2 and len(err.splitlines()) == 1 and want in err, (argv, err)


def test_action_expert_parts_and_the_action_only_step(capsys):
    dense = json.loads(_run(["--preset", "wan22-5b", "--json"], capsys)[1])
    code, out, _ = _run(["--preset", "wan22-5b-mot", "--json"], capsys)
    assert code == 0
    mot = json.loads(out)
    parts = mot["parameters"]
    assert parts["total"] == param_count(get_model_config("wan22-5b-mot"))
    # the visual stream is the dense model's; the expert's parts are reported on their own
    for k in ("blocks.self_attention", "blocks.cross_attention", "blocks.ffn", "video_in", "video_out"):
        assert parts[k] == dense["parameters"][k], k
    assert parts["action_expert.blocks.ffn"] == 30 * 2 * 1024 * 4096 + 30 * (4096 + 1024)
    assert "action_expert.blocks.ffn" not in dense["parameters"]
    step_d, step_m = dense["action_only_step"], mot["action_only_step"]
    assert (step_d["stream_width"], step_m["stream_width"]) == (3072, 1024)
    assert step_m["attention_flops"] == step_d["attention_flops"]  # same heads, same C + P keys
    assert step_d["flops"] > 4 * step_m["flops"]
    text = _run(["--preset", "wan22-5b-mot"], capsys)[1]
    assert "action_expert.blocks.ffn" in text and "action-only step (P 48 tokens through a 1024-wide" in text


@pytest.mark.parametrize("preset", ["debug", "debug-mot"])
def test_action_only_step_flops_match_torchs_count(preset):
    """The formula against torch's FLOP counter on one real ``forward_actions`` step (math attention)."""
    import torch
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    from pipelines.model_info import action_step
    from pretrain.model import build_model

    cfg = get_model_config(preset)
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    g = torch.Generator().manual_seed(0)
    text_tokens = 5
    with torch.no_grad():
        cache = model.encode_context(
            torch.randn(1, 48, 1, 8, 8, generator=g),
            state_B32=torch.randn(1, 32, generator=g),
            embodiment_id_B=torch.tensor([1]),
            text_BLD=torch.randn(1, text_tokens, cfg.text_dim, generator=g),
        )
        steps = model.action_steps(cache, torch.tensor([[0.9, 0.5]]))
        with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
            model.forward_actions(cache, torch.randn(1, cfg.chunk, 32, generator=g), steps=steps, step=1)
    assert counter.get_total_flops() == action_step(cfg, cache.num_context, text_tokens)["flops"]
