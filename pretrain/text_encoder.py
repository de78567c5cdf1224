"""The text encoders the model owns: umT5 token states for conditioning, and CoCa for captions and
CLIP scores.

**umT5** (:class:`UMT5TextEncoder`): ``transformers``' ``UMT5EncoderModel`` and its tokenizer,
as Wan2.2 conditions on umT5-XXL: an instruction becomes up to ``max_tokens`` token states
(``last_hidden_state``, 4096-d for XXL) with the tokenizer's attention mask; padded positions
are zeroed, as Wan's pipeline does. Loaded by Hub repo id or local folder — a transformers umT5
folder, or a diffusers Wan folder with ``subfolder="text_encoder"`` (tokenizer from the sibling
``tokenizer``). It implements :class:`schemas.text.TextEncoder`; :func:`text_encoder_from_config`
is the picklable factory curation's driver passes to the job (it also builds the torch-free
``hashed`` encoder, so callers need one entry point).

**CoCa** (:class:`Captioner`, ``open_clip``): its image/text towers give CLIP text–image scores
and its multimodal decoder writes the caption. Captions come from a plain greedy decoding loop
over the CoCa text decoder — ``CoCa.generate`` needs an old ``transformers``; this needs nothing.
``pretrained`` is an ``open_clip`` tag, a local checkpoint file, or ``None`` for a randomly
initialised model of the same architecture (tests, offline demos); the random initialisation is
seeded without touching the caller's global torch RNG.

Weights that cannot be had offline fail at start-up with a message saying what to do.
Curation runs both without importing this package: the driver (``pipelines/curate.py``) hands
the factories to the job (:class:`schemas.text.CaptionModel` and :class:`schemas.text.TextEncoder`
are the interfaces). The deployed policy builds its text encoder from the same factory and the
encoder identity the dataset recorded.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch

from schemas.text import HashedTokenEncoder, TextEncoder, TextEncoderConfig, WeightsUnavailableError

__all__ = ["Captioner", "UMT5TextEncoder", "WeightsUnavailableError", "text_encoder_from_config"]


def text_encoder_from_config(cfg: TextEncoderConfig) -> TextEncoder:
    """The encoder ``cfg`` names; a module-level function, so Ray pickles it by name."""
    return HashedTokenEncoder(cfg) if cfg.kind == "hashed" else UMT5TextEncoder(cfg)


def _hub_reachable() -> str | None:
    """None when the Hub can be reached; otherwise why not (offline mode, or no connection)."""
    import socket
    from urllib.parse import urlparse

    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return "HF_HUB_OFFLINE is set"
    host = urlparse(constants.ENDPOINT).hostname or "huggingface.co"
    try:
        socket.create_connection((host, 443), timeout=3).close()
        return None
    except OSError as err:
        return f"{host} cannot be reached ({err})"


class UMT5TextEncoder:
    """umT5 token states ``[N, L, E]`` and mask ``[N, L]`` (see the module docstring)."""

    def __init__(self, cfg: TextEncoderConfig, device: str | torch.device = "cpu"):
        from transformers import AutoTokenizer, UMT5EncoderModel

        if cfg.kind != "umt5":
            raise ValueError(f"UMT5TextEncoder: config kind is {cfg.kind!r}")
        self.cfg = cfg
        tok_sub = "tokenizer" if cfg.subfolder == "text_encoder" else cfg.subfolder
        local = Path(cfg.name).expanduser()
        offline = not local.is_dir() and not self._cached(cfg.name, cfg.subfolder) and _hub_reachable()
        if local.exists() and not local.is_dir():
            raise WeightsUnavailableError(
                f"umT5 text encoder {cfg.name!r}: is a file; expected a model folder"
            )
        if offline:
            raise WeightsUnavailableError(
                f"umT5 text encoder {cfg.name!r}: not a local folder, not in the Hugging Face cache, and "
                f"cannot be downloaded ({offline}). Download it once where there is network "
                f"(huggingface-cli download {cfg.name}) and copy the cache, or give a local folder as the "
                "text encoder's name."
            )
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(
                str(local) if local.is_dir() else cfg.name, subfolder=tok_sub
            )
            self.model = UMT5EncoderModel.from_pretrained(
                str(local) if local.is_dir() else cfg.name, subfolder=cfg.subfolder
            )
        except (OSError, ValueError) as err:
            raise WeightsUnavailableError(
                f"umT5 text encoder {cfg.name!r} (subfolder {cfg.subfolder!r}) cannot be loaded: "
                f"{type(err).__name__}: {err}"
            ) from err
        self.model.eval().requires_grad_(False).to(device)

    @staticmethod
    def _cached(name: str, subfolder: str) -> bool:
        from huggingface_hub import try_to_load_from_cache

        path = f"{subfolder}/config.json" if subfolder else "config.json"
        try:
            return isinstance(try_to_load_from_cache(name, path), str)
        except ValueError:  # not a valid repo id
            return False

    @property
    def identity(self) -> dict[str, Any]:
        c = self.cfg
        dim = int(self.model.config.d_model)
        return {
            "kind": "umt5",
            "name": c.name,
            "subfolder": c.subfolder,
            "dim": dim,
            "max_tokens": c.max_tokens,
        }

    def to(self, device: str | torch.device) -> UMT5TextEncoder:
        self.model.to(device)
        return self

    @torch.no_grad()
    def encode(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        dev = next(self.model.parameters()).device
        tok = self.tokenizer(
            texts, padding="longest", truncation=True, max_length=self.cfg.max_tokens, return_tensors="pt"
        )
        mask_NL = tok["attention_mask"].to(dev)
        states_NLE = self.model(input_ids=tok["input_ids"].to(dev), attention_mask=mask_NL).last_hidden_state
        states_NLE = states_NLE.float() * mask_NL[..., None]  # Wan zeroes the states past each prompt
        return states_NLE.cpu().numpy(), mask_NL.bool().cpu().numpy()


def load_open_clip(model: str, pretrained: str | None, device: str = "cpu", seed: int = 0):
    """Model, image preprocessing and tokenizer; a clear error when weights cannot be had."""
    import open_clip

    if model not in open_clip.list_models():
        from schemas.registry import did_you_mean

        raise ValueError(f"unknown open_clip model {model!r}{did_you_mean(model, open_clip.list_models())}")
    if pretrained is not None and not Path(pretrained).is_file():
        tags = open_clip.list_pretrained_tags_by_model(model)
        if pretrained not in tags:
            raise ValueError(
                f"open_clip has no pretrained tag {pretrained!r} for {model!r} "
                f"(tags: {tags}); or give a local checkpoint file"
            )
        if not Path(pretrained).is_file():
            _check_reachable(model, pretrained)
    try:
        # the random initialisation draws from the global RNG: seed it inside a fork so that
        # loading the captioner leaves the caller's random stream as it was
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            net, _, preprocess = open_clip.create_model_and_transforms(
                model, pretrained=pretrained, device=device, pretrained_text=False
            )
    except Exception as err:
        where = os.environ.get("HF_HOME", "~/.cache/huggingface")
        raise WeightsUnavailableError(
            f"cannot load open_clip weights {model}/{pretrained}: {type(err).__name__}: {err}. "
            f"They are neither in the local cache ({where}) nor downloadable from here. Download them "
            "once on a machine with network (open_clip.create_model('"
            f"{model}', pretrained='{pretrained}')) and copy the cache, or pass a local checkpoint "
            "file as `pretrained`, or pretrained=None for a randomly initialised model (tests only)."
        ) from err
    net.eval()
    return net, preprocess, open_clip.get_tokenizer(model)


def _check_reachable(model: str, tag: str) -> None:
    """Fail in seconds, not after a minute of retries, when weights are neither cached nor reachable."""
    import socket
    from urllib.parse import urlparse

    import open_clip
    from huggingface_hub import constants, try_to_load_from_cache

    cfg = open_clip.get_pretrained_cfg(model, tag)
    repo = (cfg.get("hf_hub") or "").strip("/")
    names = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")
    if repo and any(isinstance(try_to_load_from_cache(repo, n), str) for n in names):
        return
    host = urlparse(constants.ENDPOINT if repo else cfg.get("url", "")).hostname or "huggingface.co"
    offline = constants.HF_HUB_OFFLINE
    if not offline:
        try:
            socket.create_connection((host, 443), timeout=3).close()
            return
        except OSError:
            pass
    raise WeightsUnavailableError(
        f"open_clip weights {model}/{tag} are not in the local Hugging Face cache and {host} cannot be "
        "reached (offline). Download them once where there is network "
        f"(open_clip.create_model('{model}', pretrained='{tag}')) and copy the cache "
        f"({constants.HF_HUB_CACHE}), pass a local checkpoint file as `pretrained`, or use pretrained=None "
        "for a randomly initialised model (tests only)."
    )


@dataclass(frozen=True)
class CaptionerSettings:
    """What the captioner needs of curation's ``CaptionConfig`` (same field names)."""

    model: str
    pretrained: str | None
    captions: bool = True
    max_tokens: int = 24
    min_tokens: int = 3
    device: str = "cpu"
    seed: int = 0


def captioner_from_config(cfg: Any) -> Captioner:
    """The factory curation's driver hands to the job: a :class:`Captioner` from any config with
    :class:`CaptionerSettings`' fields (curation's ``CaptionConfig``); a module-level function,
    so Ray pickles it by name and each actor loads its own model."""
    return Captioner(CaptionerSettings(**{f.name: getattr(cfg, f.name) for f in fields(CaptionerSettings)}))


class Captioner:
    """The pure core: images [N,H,W,3] uint8 and texts in, numbers and strings out."""

    def __init__(self, cfg: CaptionerSettings):
        self.cfg = cfg
        self.model, self.preprocess, self.tokenizer = load_open_clip(
            cfg.model, cfg.pretrained, cfg.device, cfg.seed
        )
        self._text_cache: dict[str, np.ndarray] = {}

    @property
    def embed_dim(self) -> int:
        return int(self.model.text_projection.shape[1]) if hasattr(self.model, "text_projection") else -1

    def _pixels(self, images_NHWC: np.ndarray) -> torch.Tensor:
        from PIL import Image

        batch = [self.preprocess(Image.fromarray(img)) for img in images_NHWC]
        return torch.stack(batch).to(self.cfg.device)

    @torch.no_grad()
    def embed_text(self, texts: list[str]) -> np.ndarray:
        """Unit-norm CLIP text embeddings [N, E] (cached per distinct text)."""
        todo = sorted({t for t in texts if t not in self._text_cache})
        if todo:
            tokens = self.tokenizer(todo).to(self.cfg.device)
            emb = self.model.encode_text(tokens, normalize=True).float().cpu().numpy()
            self._text_cache.update(zip(todo, emb, strict=True))
        return np.stack([self._text_cache[t] for t in texts]).astype(np.float32)

    @torch.no_grad()
    def score_and_caption(self, images_NHWC: np.ndarray, texts: list[str]) -> tuple[np.ndarray, list[str]]:
        """CLIP cosine similarity of each image with its text, and a CoCa caption per image."""
        pixels = self._pixels(images_NHWC)
        image_latent, image_embs = self.model._encode_image(pixels, normalize=True)
        text_emb = torch.from_numpy(self.embed_text(texts)).to(image_latent)
        scores = (image_latent.float() * text_emb).sum(-1).cpu().numpy().astype(np.float32)
        captions = self._greedy_captions(image_embs) if self.cfg.captions else [""] * len(texts)
        return scores, captions

    def _greedy_captions(self, image_embs: torch.Tensor) -> list[str]:
        """Greedy decoding over the CoCa text decoder, one token per step for the whole batch."""
        import open_clip

        sot = self.tokenizer.sot_token_id
        eot = self.tokenizer.eot_token_id
        batch = image_embs.shape[0]
        tokens_BT = torch.full((batch, 1), sot, dtype=torch.long, device=image_embs.device)
        done_B = torch.zeros(batch, dtype=torch.bool, device=image_embs.device)
        for step in range(self.cfg.max_tokens):
            _, token_embs = self.model._encode_text(tokens_BT)
            logits_BTV = self.model.text_decoder(image_embs, token_embs)
            logits_BV = logits_BTV[:, -1].float()
            if step < self.cfg.min_tokens:
                logits_BV[:, eot] = -torch.inf
            logits_BV[:, sot] = -torch.inf
            nxt_B = logits_BV.argmax(-1)
            nxt_B = torch.where(done_B, torch.full_like(nxt_B, eot), nxt_B)
            tokens_BT = torch.cat([tokens_BT, nxt_B[:, None]], dim=1)
            done_B |= nxt_B == eot
            if bool(done_B.all()):
                break
        texts = []
        for row in tokens_BT.cpu():
            ids = row.tolist()
            ids = ids[1 : ids.index(eot)] if eot in ids else ids[1:]
            texts.append(open_clip.decode(torch.tensor(ids)).strip())
        return texts
