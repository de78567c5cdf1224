"""``gwp model-info``: parameters, token groups, attention FLOPs and ZeRO memory of a preset."""

from __future__ import annotations

import json

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
