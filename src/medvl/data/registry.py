"""Dataset registry: a YAML file naming data sets, and training mixes of them by weight.

Example ``datasets.yaml``::

    root: /data/medical            # base of relative paths below (default: this file's folder)
    datasets:
      vqa-rad-train:
        path: vqa_rad/train.jsonl  # records file (native or MedM-VL/LLaVA JSON/JSONL)
        root: vqa_rad/images       # media root (default: the records file's folder)
        split: train
        weight: 1.0                # uses per epoch: 0.5 = a random half, 2 = twice
      ct-rate-train:
        path: ct_rate/train.json
        format: medmvl
        root: ct_rate/images
        volume_root: ct_rate/volumes
        split: train
        weight: 0.5
      cr-12bit:
        path: cr/train.jsonl
        window: [2048, 4096]     # intensity window of its 2D images (a record's "window" wins)

``load_registry_records("datasets.yaml", split="train")`` returns the weighted mix; a plain
records file works wherever a registry does (one data set, weight 1).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import yaml

from medvl.data.records import Record, load_records
from medvl.utils.config import from_dict

logger = logging.getLogger(__name__)

REGISTRY_SUFFIXES = (".yaml", ".yml")


@dataclass
class DatasetEntry:
    """One named data set of a registry.

    Args:
        name: the data set's name (its key in the registry; also ``meta["source"]`` of its records).
        path: records file, relative to the registry root.
        root: media root (relative to the registry root); default the records file's folder.
        volume_root: root of volume paths when it differs from ``root`` (MedM-VL's image3d_dir).
        format: ``auto``, ``native`` or ``medmvl``.
        split: ``train``, ``validation``, ``test``... (free text, used to select).
        weight: uses of each record per epoch when mixing (0.5 = a random half, 2 = twice).
        window: intensity window for this data set's 2D images ([center, width], a preset name or
            "minmax"); a record's own ``"window"`` wins. None: the file format's rule.
    """

    name: str = ""
    path: str = ""
    root: str | None = None
    volume_root: str | None = None
    format: Literal["auto", "native", "medmvl"] = "auto"
    split: str = "train"
    weight: float = 1.0
    window: list[float] | str | None = None

    def load(self) -> list[Record]:
        """Load this data set's records (``meta["source"]`` = its name, ``meta["split"]``)."""
        records = load_records(self.path, self.root, volume_root=self.volume_root, format=self.format, source=self.name)
        for rec in records:
            rec.meta["source"] = self.name
            rec.meta.setdefault("split", self.split)
            if self.window is not None:
                rec.meta.setdefault("window", self.window)
        return records


@dataclass
class Registry:
    """Named data sets.

    Args:
        datasets: name -> entry (paths already absolute).
        path: the YAML file it was read from.
    """

    datasets: dict[str, DatasetEntry] = field(default_factory=dict)
    path: str | None = None

    def select(self, split: str | None = None, names: list[str] | None = None) -> list[DatasetEntry]:
        """Entries of a split and/or with given names (registry order).

        Args:
            split: keep only this split (None: all).
            names: keep only these names (None: all); unknown names raise ``ValueError``.
        """
        if names:
            unknown = [n for n in names if n not in self.datasets]
            if unknown:
                raise ValueError(
                    f"unknown data set(s) {unknown} in {self.path}; valid names: {', '.join(self.datasets)}"
                )
        out = [e for n, e in self.datasets.items() if (not names or n in names) and (split is None or e.split == split)]
        if not out:
            splits = sorted({e.split for e in self.datasets.values()})
            raise ValueError(
                f"no data set in {self.path} matches split={split!r} names={names}; splits present: {splits}"
            )
        return out


def is_registry(path: str | Path) -> bool:
    """Whether a path names a registry YAML (rather than a records file).

    Args:
        path: file path.
    """
    return Path(path).suffix.lower() in REGISTRY_SUFFIXES


def load_registry(path: str | Path) -> Registry:
    """Read a registry YAML; relative paths are made absolute against its ``root``.

    Args:
        path: the YAML file.
    """
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except FileNotFoundError:
        raise ValueError(f"registry file not found: {path}") from None
    except yaml.YAMLError as err:
        raise ValueError(f"{path}: not valid YAML: {err}") from err
    if not isinstance(data, dict) or not isinstance(data.get("datasets"), dict):
        raise ValueError(
            f"{path}: a registry needs a 'datasets:' mapping of name -> {{path, root, format, split, weight}}"
        )
    unknown = sorted(set(data) - {"root", "datasets"})
    if unknown:
        raise ValueError(f"{path}: unknown top-level key(s) {unknown}; valid keys: datasets, root")
    base = path.parent / Path(data.get("root") or ".").expanduser()

    def absolute(p: str | None) -> str | None:
        return None if p is None else str(base / Path(p).expanduser())

    entries = {}
    for name, spec in data["datasets"].items():
        if not isinstance(spec, dict):
            raise ValueError(f"{path}: data set {name!r} must be a mapping with at least 'path'")
        entry = from_dict(DatasetEntry, {**spec, "name": str(name)}, prefix=f"datasets.{name}.")
        if not entry.path:
            raise ValueError(f"{path}: data set {name!r} has no 'path'")
        if entry.weight < 0:
            raise ValueError(f"{path}: data set {name!r} has a negative weight {entry.weight}")
        entry.path = str(base / Path(entry.path).expanduser())
        entry.root, entry.volume_root = absolute(entry.root), absolute(entry.volume_root)
        entries[str(name)] = entry
    return Registry(entries, str(path))


def load_sources(
    source: str | Path,
    split: str | None = None,
    names: list[str] | None = None,
    weights: dict[str, float] | None = None,
) -> list[tuple[DatasetEntry, list[Record]]]:
    """Load the data sets named by a registry (or one records file) with their weights.

    Args:
        source: a registry YAML or a records file.
        split: registry split to select (ignored for a records file).
        names: registry names to select.
        weights: name -> weight overriding the registry's.
    """
    if is_registry(source):
        entries = load_registry(source).select(split, names)
    else:
        entries = [DatasetEntry(name=Path(source).stem, path=str(source), split=split or "train")]
    out = []
    for entry in entries:
        if weights and entry.name in weights:
            entry.weight = float(weights[entry.name])
        out.append((entry, entry.load()))
        logger.info("data set %s: %d records (weight %g)", entry.name, len(out[-1][1]), entry.weight)
    return out


def load_registry_records(
    source: str | Path,
    split: str | None = "train",
    names: list[str] | None = None,
    weights: dict[str, float] | None = None,
    seed: int = 0,
) -> list[Record]:
    """The weighted mix of a registry's data sets (or the records of one file).

    Args:
        source: a registry YAML or a records file.
        split: registry split to select.
        names: registry names to select.
        weights: name -> weight overriding the registry's.
        seed: seed of the fractional-weight draws.
    """
    from medvl.data.dataset import mix_records

    return mix_records([(recs, e.weight) for e, recs in load_sources(source, split, names, weights)], seed=seed)
