"""Hub cards' YAML front matter: read it, merge a new push with what the repo already shows.

A card (``README.md``) starts with YAML between two ``---`` lines (license, tags, pretty name,
``configs`` …). A push regenerates the card, but the repo's owner may have set fields by an
earlier push or by hand on the Hub; a re-publish must not wipe them. Both publishers (datasets in
``curation.publish``, models in ``pretrain.hub``) therefore read the header now published and merge:

* the keys the push *describes* (a dataset's ``configs``/``size_categories``) always come from it;
* the keys the user *chose* this time (``license`` given as a flag) come from it;
* every other key already on the Hub is kept, and tags are the union (earlier first);
* key order is the new header's, then earlier-only keys, so a card merged with itself is unchanged
  and an unchanged re-publish makes no commit.

No torch here: the dataset publisher imports this module.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml

CARD_NAME = "README.md"


def card_header(text: str) -> dict[str, Any]:
    """The YAML front matter of a card (``---`` … ``---`` at the top); {} when it has none."""
    lines = text.splitlines()
    if not lines or lines[0].strip() != "---":
        return {}
    end = next((i for i, line in enumerate(lines[1:], 1) if line.strip() == "---"), None)
    if end is None:
        return {}
    try:
        data = yaml.safe_load("\n".join(lines[1:end]))
    except yaml.YAMLError:  # a hand-edited card that no longer parses: nothing to keep from it
        return {}
    return data if isinstance(data, dict) else {}


def card_body(text: str) -> str:
    """The card without its front matter (the whole text when it has none)."""
    lines = text.splitlines(keepends=True)
    if not lines or lines[0].strip() != "---":
        return text
    end = next((i for i, line in enumerate(lines[1:], 1) if line.strip() == "---"), None)
    return text if end is None else "".join(lines[end + 1 :])


def with_header(header: Mapping[str, Any], body: str) -> str:
    """A card from its front matter and body."""
    return "---\n" + yaml.safe_dump(dict(header), sort_keys=False).strip() + "\n---\n" + body


def merge_card_header(
    generated: Mapping[str, Any],
    earlier: Mapping[str, Any],
    *,
    regenerated: Iterable[str] = (),
    chosen: Iterable[str] = (),
) -> dict[str, Any]:
    """``generated`` with the fields of the ``earlier`` card kept (see the module docstring):
    ``regenerated`` keys and the ``chosen`` ones (set by the user for this push) come from
    ``generated``; other earlier keys win; tags are the earlier ones followed by the new ones."""
    fresh = set(regenerated) | set(chosen)
    merged = dict(generated)
    for key, value in earlier.items():
        if key in fresh:
            continue
        if key == "tags" and isinstance(value, list):
            merged["tags"] = list(dict.fromkeys([*value, *generated.get("tags", [])]))
        else:
            merged[key] = value
    return merged


def published_card_header(
    repo_id: str, repo_type: str, revision: str | None = None, token: str | None = None
) -> dict[str, Any]:
    """The YAML header of the card now on the Hub at ``revision`` (a branch that does not exist yet
    will start from ``main``: its card); {} when the repo or the card does not exist."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import (
        RemoteEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    from schemas.hub.client import REPO_ID_PATTERN, hub_errors

    if not REPO_ID_PATTERN.match(repo_id):  # the upload refuses it, with its own message
        return {}
    with tempfile.TemporaryDirectory(prefix="gwp-card-") as tmp:  # not the user's HF cache
        for rev in dict.fromkeys([revision or "main", "main"]):
            with hub_errors(f"read the {repo_type} card", repo_id, repo_type, rev, token):
                try:
                    path = hf_hub_download(
                        repo_id, CARD_NAME, repo_type=repo_type, revision=rev, token=token, cache_dir=tmp
                    )
                except RevisionNotFoundError:
                    continue
                except (RepositoryNotFoundError, RemoteEntryNotFoundError):
                    return {}
            return card_header(Path(path).read_text(encoding="utf-8", errors="replace"))
    return {}
