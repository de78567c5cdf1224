"""One batch of tensors from shard rows (the loader's collate step, run in dataloader workers).

Batch contents (B batch, p chunk, K future frames, L text tokens, E text width; frames
channel-first so that ``torch.cat([obs[:, :, None], future], 2)`` is the codec's
``[B, 3, 1+K, H, W]`` input)::

    obs_frames [B, 3, H, W] and future_frames [B, 3, K, H, W]   float32 in [-1, 1] (or uint8)
    obs_latents [B, C, 1, h, w] and future_latents [B, C, K', h, w]  from a latent cache, the
                                  rows' stored ``latents`` (curation's latent stage; the frames are
                                  then decoded only if the loader asks for them) or
                                  ``video_format == "latent"``  (K' = K frame by frame, K/t as one clip)
    action [B, p, 32]  action_mask [B, 32]  state [B, 32]  state_mask [B, 32]  embodiment_id [B]
    text_states [B, L, E] float32 + text_mask [B, L] bool   each row's instruction, looked up in
                        the dataset's text store (L: the batch's longest instruction)
    sample_id, episode_id, embodiment, instruction, caption: lists of str
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from pretrain.pixels import tensor_to_unit_range
from pretrain.shards import decode_latents, decode_row_frames
from schemas import MAX_DIM, SchemaError
from schemas.latents import latents_from_bytes
from schemas.text_store import TextStore

if TYPE_CHECKING:
    from pretrain.data import LoaderConfig


def text_lookup(text: TextStore, instructions: list[str], where: str) -> tuple[torch.Tensor, torch.Tensor]:
    """``(states [B, L, E], mask [B, L])`` of the instructions, cut to the longest one."""
    rows = text.rows(instructions, where)
    mask_BL = text.mask_UL[rows]
    L = int(np.nonzero(mask_BL.any(axis=0))[0].max()) + 1
    return torch.from_numpy(text.states_ULE[rows, :L].copy()), torch.from_numpy(mask_BL[:, :L].copy())


def _stack(name: str, values: list[np.ndarray], where: list[str], rows: list[dict[str, Any]]) -> torch.Tensor:
    shapes = {v.shape for v in values}
    if len(shapes) > 1:
        first = values[0].shape
        i = next(i for i, v in enumerate(values) if v.shape != first)
        raise SchemaError(
            where[i], name, f"sample {rows[i]['sample_id']} has shape {values[i].shape}, batch has {first}"
        )
    return torch.from_numpy(np.stack(values))


def collate(
    rows: list[dict[str, Any]],
    where: list[str],
    cfg: LoaderConfig,
    latents_BCFhw: torch.Tensor | None = None,
    text: TextStore | None = None,
) -> dict[str, Any]:
    """Shard rows (``Sample.to_row`` dicts) → one batch of tensors; see the module docstring."""
    out: dict[str, Any] = {
        k: [r[k] for r in rows] for k in ("sample_id", "episode_id", "embodiment", "instruction", "caption")
    }
    out["embodiment_id"] = torch.tensor([r["embodiment_id"] for r in rows], dtype=torch.long)
    actions = [np.asarray(r["action"], dtype=np.float32).reshape(-1, MAX_DIM) for r in rows]
    out["action"] = _stack("action", actions, where, rows)
    for name, dtype in (("action_mask", bool), ("state", np.float32), ("state_mask", bool)):
        out[name] = _stack(name, [np.asarray(r[name], dtype=dtype) for r in rows], where, rows)
    if text is not None:
        out["text_states"], out["text_mask"] = text_lookup(text, out["instruction"], where[0])

    num_frames = [len(r["frame_indices"]) for r in rows]
    stored = latents_BCFhw is None and bool(rows[0].get("latents"))
    if stored:
        lat = []
        for r, src in zip(rows, where, strict=True):
            if not r.get("latents"):
                raise SchemaError(
                    src, "latents", f"sample {r['sample_id']} has no stored latents, its batch has"
                )
            lat.append(latents_from_bytes(r["latents"], r["latent_shape"], f"{src}: sample {r['sample_id']}"))
        latents_BCFhw = _stack("latent_shape", lat, where, rows)
    elif latents_BCFhw is None and rows[0]["video_format"] == "latent":
        lat = []
        for r, src in zip(rows, where, strict=True):
            if r["video_format"] != "latent":
                raise SchemaError(
                    src, "video_format", f"sample {r['sample_id']} is {r['video_format']!r} in a latent batch"
                )
            lat.append(decode_latents(r["video"], r["latent_shape"]))
        latents_BCFhw = _stack("latent_shape", lat, where, rows)
    if latents_BCFhw is not None:
        n_lat, n = latents_BCFhw.shape[2], num_frames[0]
        if n_lat < 2 or (n - 1) % (n_lat - 1):  # frame by frame (n_lat = n) or one clip (1 + (n−1)/t)
            raise ValueError(
                f"{where[0]}: latents have {n_lat} frames for {n} sample frames; want {n} (frame by frame) "
                "or 1 + (frames − 1)/t (one clip through a codec with t× temporal compression)"
            )
        out["obs_latents"] = latents_BCFhw[:, :, :1]
        out["future_latents"] = latents_BCFhw[:, :, 1:]
    if cfg.load_frames and (latents_BCFhw is None or stored):
        frames = []
        for r, src, n in zip(rows, where, num_frames, strict=True):
            try:
                frames.append(decode_row_frames(r["video"], r["video_format"], n, r["height"], r["width"]))
            except ValueError as err:
                raise ValueError(f"{src}: sample {r['sample_id']}: {err}") from err
        f_BFHWC = _stack("video", frames, where, rows)
        f_BCFHW = f_BFHWC.permute(0, 4, 1, 2, 3)
        if not cfg.frames_uint8:
            f_BCFHW = tensor_to_unit_range(f_BCFHW)
        out["obs_frames"] = f_BCFHW[:, :, 0].contiguous()
        out["future_frames"] = f_BCFHW[:, :, 1:].contiguous()
    return out
