"""A tiny random umT5 text encoder, and the check that the model's text cross-attention learns.

:func:`save_tiny_umt5` writes a folder that ``transformers`` loads as an umT5 encoder and its
tokenizer: a 2-layer random ``UMT5EncoderModel`` and a word-level tokenizer over ``words`` that
appends ``</s>`` as T5's does. Nothing is downloaded.

:func:`assert_q_and_k_learn`: with a single text token, softmax over one key is 1 whatever q·k,
so q and k (and their norms) get no gradient; with a token sequence they must, in every block.
It backpropagates the joint loss of one batch and asks exactly that, relative to v's gradient.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch


def save_tiny_umt5(folder: Path, words: Sequence[str], *, seed: int = 0, **config: Any) -> Path:
    """Encoder + tokenizer in ``folder``; ``config`` sets the ``UMT5Config`` (``d_model`` at least)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast, UMT5Config, UMT5EncoderModel

    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2, **{w: i + 3 for i, w in enumerate(words)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    torch.manual_seed(seed)
    cfg = UMT5Config(**{"vocab_size": len(vocab), "d_ff": 64, "num_layers": 2, "num_heads": 4, **config})
    UMT5EncoderModel(cfg).save_pretrained(folder)
    PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>"
    ).save_pretrained(folder)
    return folder


def assert_q_and_k_learn(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> None:
    """Backpropagate ``model.joint_loss(batch)``; q, k and their norms get gradient in every block."""
    loss, _ = model.joint_loss(batch, generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(loss)
    loss.backward()
    for i, block in enumerate(model.transformer.blocks):
        ca = block.cross_attn
        g = {n: getattr(ca, n).weight.grad.norm().item() for n in ("q", "k", "v")}
        assert g["q"] > 1e-3 * g["v"] and g["k"] > 1e-3 * g["v"], f"block {i}: {g}"
        assert ca.q_norm.weight.grad.norm() > 0 and ca.k_norm.weight.grad.norm() > 0
