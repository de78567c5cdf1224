"""The per-episode stages' pure cores (ARCHITECTURE.md, "Curation stages").

Each module works on one record (an :class:`schemas.Episode`, a
:class:`~curation.stages.windowing.Window`) or merges small per-episode results; none is a
Ray function of its own. The job runs them inside one pass per episode, one Ray task per
run of episodes (:mod:`curation.episode_samples`, called by :mod:`curation.phases.episodes`),
and the driver's phases use their N:1 parts. Row cardinalities:

* :mod:`.filters`   — episode → verdict (1:1; a rejected one goes to the ledger) with quality
  scores and a fingerprint; near-duplicates are an N:1 step over the fingerprints
  (:func:`.filters.make_dedup_rejections`, run by :mod:`curation.phases.dedup`)
* :mod:`.windowing` — episode → windows (1:N), with a rejection per window that cannot be made
* :mod:`.stats`     — an episode's windows → one mergeable accumulator (1:1); accumulators →
  ``EmbodimentStats`` per embodiment (N:1, :mod:`curation.phases.statistics`)
* :mod:`.sketch`    — the mergeable quantile sketch and moments behind :mod:`.stats`

Composition, the frame codec and normalisation are the contract with training and live in
:mod:`schemas` (``compose``, ``frames``, ``normalize``); a part's rows are normalised into
Sample rows by the shard phase (:mod:`curation.phases.pack`).
"""
