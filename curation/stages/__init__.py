"""Curation stages as pure functions plus small factories (ARCHITECTURE.md, "Curation stages").

Each module has a pure core that works on one record (an :class:`schemas.Episode`, a
:class:`~curation.stages.windowing.Window`) and a ``make_*_fn(cfg)`` factory returning the
per-row (or per-batch) function a Ray Data driver passes to ``map`` / ``flat_map`` /
``map_batches``. Row cardinalities:

* :mod:`.filters`   — episode → episode + verdict (1:1, rejected ones go to the ledger);
  near-duplicates are an N:1 step over fingerprints (:func:`.filters.make_dedup_rejections`)
* :mod:`.windowing` — episode → windows (1:N), with window accounting (1:1)
* :mod:`.stats`     — episodes → one sketch per batch and embodiment (N:1, mergeable)
* :mod:`.compose`   — window → window + encoded composed frames (1:1)
* :mod:`.caption`   — captions, CLIP scores and text embeddings (actor pool, batched)
* :mod:`.sample`    — window + frames → normalised, validated Sample row (1:1)
* :mod:`.normalize`, :mod:`.sketch` — the arithmetic behind stats and samples
"""
