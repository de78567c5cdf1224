"""The contract every source format implements.

A reader is split in two so that Ray can parallelise it:

* ``list_episodes()`` runs on the driver (or one task per source) and is cheap: it reads
  metadata only and returns one :class:`EpisodeRef` per episode;
* ``load(ref)`` runs in a worker and returns a validated :class:`~schemas.Episode` whose
  frames are *references* (decoded later by :mod:`curation.frames`), or raises
  :class:`LoadError` with a machine-readable reason.

Nothing is dropped silently: a file that cannot even be listed gives a :class:`LoadError`
from ``list_episodes`` (or a ``ListFailure`` entry), which becomes a rejection-ledger entry.

Identity: every reader has a ``dataset_id``, a fingerprint of the dataset's content
(:mod:`curation.formats.fingerprint`) computed once, on the driver, when it is first asked
for; each ref carries it, and episode ids are ``episode_id_for(dataset_id, path, index)``
(:meth:`SourceReader.episode_id`), so they never depend on the dataset's name and a worker
never fingerprints anything.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, ClassVar

from curation.formats.fingerprint import dataset_files, dataset_fingerprint
from curation.formats.mapping import SourceMapping
from schemas import Episode, episode_id_for
from schemas.errors import LoadError


def file_version(path: str | Path) -> tuple[str, int, int]:
    """``(resolved path, size, mtime_ns)``: the key of per-process caches of a file's contents,
    so that a rewritten file is read again. Raises OSError when the file cannot be stat'ed."""
    path = Path(path)
    st = path.stat()
    return str(path.resolve()), st.st_size, st.st_mtime_ns


class UnknownLayoutError(LoadError):
    def __init__(self, path: str | Path, looked_for: str):
        super().__init__("unknown_layout", f"not a known dataset layout; looked for {looked_for}", path)


@dataclass(frozen=True)
class EpisodeRef:
    """Enough to find one episode again in another process (JSON-serialisable)."""

    format: str
    root: str  # the source root: a folder or a single file
    path: str  # the file that holds the episode (named in rejections)
    index: int  # index of the episode within the source
    source: str  # source dataset name (for people; ids come from dataset_id)
    locator: dict[str, Any] = field(default_factory=dict)  # format-specific, JSON-safe
    dataset_id: str = ""  # the reader's dataset_id; "" = ask the reader again

    @property
    def label(self) -> str:
        return f"{Path(self.path).name}#{self.index}"

    def to_row(self) -> dict[str, Any]:
        import json

        return {
            "format": self.format,
            "root": self.root,
            "path": self.path,
            "index": self.index,
            "source": self.source,
            "locator": json.dumps(self.locator, sort_keys=True),
            "dataset_id": self.dataset_id,
        }

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> EpisodeRef:
        import json

        return cls(
            format=row["format"],
            root=row["root"],
            path=row["path"],
            index=int(row["index"]),
            source=row["source"],
            locator=json.loads(row["locator"]) if isinstance(row["locator"], str) else row["locator"],
            dataset_id=row.get("dataset_id") or "",
        )


class SourceReader(ABC):
    """Base class of the format readers; subclasses set ``format`` and implement three methods."""

    format: ClassVar[str]

    def __init__(self, root: str | Path, mapping: SourceMapping | None = None, source: str | None = None):
        self.root = Path(root)
        self.mapping = mapping if mapping is not None else SourceMapping.for_source(self.root, self.format)
        self.source = source or self.mapping.source or self.root.stem
        self._dataset_id: str | None = None

    @property
    def dataset_id(self) -> str:
        """The dataset's identity (:func:`~curation.formats.fingerprint.dataset_fingerprint` of
        :meth:`identity_files`), computed once."""
        return self._dataset_id or self.fingerprint()

    def fingerprint(self) -> str:
        """Fingerprint the dataset as it is now, and keep that as :attr:`dataset_id`."""
        self._dataset_id = dataset_fingerprint(self.format, self.root, self.identity_files())
        return self._dataset_id

    def identity_files(self) -> list[Path]:
        """The files whose content identifies the dataset; every file of the source by default."""
        return dataset_files(self.root)

    def episode_id(self, ref: EpisodeRef, path: str, index: int) -> str:
        """The id of episode ``index`` of file ``path`` (relative to the root) of ``ref``'s dataset."""
        return episode_id_for(ref.dataset_id or self.dataset_id, path, index)

    @staticmethod
    @abstractmethod
    def detect(root: Path) -> bool:
        """True if ``root`` looks like this format (cheap: file names and headers only)."""

    @abstractmethod
    def list_episodes(self) -> list[EpisodeRef]:
        """One ref per episode; raises LoadError if the source cannot be listed at all."""

    @abstractmethod
    def load(self, ref: EpisodeRef) -> Episode:
        """The episode, validated, frames as references; raises LoadError."""

    def refs(self) -> list[EpisodeRef]:
        """:meth:`list_episodes`, each ref carrying :attr:`dataset_id` (so its loader never
        fingerprints the dataset again). Listing is discovery: the dataset is fingerprinted
        again, so that a dataset rewritten in place since this reader first saw it gets the
        id of its new content."""
        refs = self.list_episodes()  # first: a source that cannot be listed fails with its reason
        dataset_id = self.fingerprint()
        return [replace(ref, dataset_id=dataset_id) for ref in refs]

    def __iter__(self):
        for ref in self.refs():
            yield self.load(ref)
