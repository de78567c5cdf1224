"""Tiny random configs of Wan2.2-TI2V-5B's two diffusers models, for CPU tests.

Shapes follow the real ones where they matter to our code — 48 latent channels, VAE patch 2 and
three spatial downsamplings (16×), two temporal downsamplings (4×), transformer patch (1, 2, 2),
umT5-width text — and everything else is shrunk so a forward pass takes milliseconds.
benchmarks/gpu_check.py builds its policy's (never run) codec from the same VAE layout.
"""

from __future__ import annotations

Z = 48  # Wan2.2 VAE z_dim = the transformer's in/out channels

WAN22_VAE = {
    "base_dim": 8,
    "z_dim": Z,
    "dim_mult": [1, 1, 1, 1],
    "num_res_blocks": 1,
    "temperal_downsample": [False, True, True],
    "is_residual": True,
    "in_channels": 12,
    "out_channels": 12,
    "patch_size": 2,
    "scale_factor_spatial": 16,
    "scale_factor_temporal": 4,
    "latents_mean": [0.01 * i for i in range(Z)],
    "latents_std": [1.0 + 0.02 * i for i in range(Z)],
}

WAN22_TRANSFORMER = {
    "patch_size": (1, 2, 2),
    "num_attention_heads": 2,
    "attention_head_dim": 16,
    "in_channels": Z,
    "out_channels": Z,
    "text_dim": 64,
    "freq_dim": 32,
    "ffn_dim": 64,
    "num_layers": 2,
    "cross_attn_norm": True,
    "qk_norm": "rms_norm_across_heads",
    "eps": 1e-6,
    "rope_max_seq_len": 64,
}
