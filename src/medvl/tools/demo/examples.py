"""Example cases of the web demo: synthetic chest phantoms (``medvl.tools.synth``), rendered on first use.

Nothing is shipped with the package: the first time an example is asked for, two radiographs and two
chest CTs are rendered into a temporary folder (a few seconds), which is removed when the process exits.
Each example carries an English question from the phantom's own records.
"""

from __future__ import annotations

import atexit
import json
import logging
import shutil
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)

KIND_LABEL = {"2d": "Chest radiograph phantom", "3d": "Chest CT phantom"}


@dataclass
class ExampleCase:
    """One example: a file and a question about it.

    Args:
        name: shown in the example list.
        kind: "2d" or "3d".
        path: the image or volume file.
        question: an English question from the case's records.
    """

    name: str
    kind: str
    path: Path
    question: str


class ExampleCases:
    """Synthetic phantom examples, rendered lazily (thread-safe) into ``folder`` or a temporary folder.

    Args:
        per_kind: cases of each kind (2D radiograph, 3D CT).
        seed: synthesis seed (the same seed gives the same phantoms).
        folder: where to render; default a temporary folder removed at exit.
    """

    def __init__(self, per_kind: int = 2, seed: int = 0, folder: str | Path | None = None):
        self.per_kind = per_kind
        self.seed = seed
        self._folder = Path(folder) if folder is not None else None
        self._cases: dict[str, ExampleCase] | None = None
        self._lock = threading.Lock()

    def names(self, images: bool = True, volumes: bool = True) -> list[str]:
        """The example names (known before anything is rendered).

        Args:
            images: include 2D radiographs (the model has a 2D encoder).
            volumes: include CT volumes (the model has a volume encoder).
        """
        kinds = [k for k, ok in (("2d", images), ("3d", volumes)) if ok]
        return [self._name(kind, i) for kind in kinds for i in range(self.per_kind)]

    def _name(self, kind: str, index: int) -> str:
        return f"{KIND_LABEL[kind]} {index + 1}"

    def get(self, name: str) -> ExampleCase:
        """The example called ``name``, rendering all examples on first use.

        Args:
            name: one of :meth:`names`.
        """
        with self._lock:
            if self._cases is None:
                self._cases = self._render()
        if name not in self._cases:
            raise ValueError(f"unknown example {name!r}; valid choices: {', '.join(self._cases)}")
        return self._cases[name]

    def _render(self) -> dict[str, ExampleCase]:
        from medvl.tools.synth.dataset import synthesize

        if self._folder is None:
            self._folder = Path(tempfile.mkdtemp(prefix="medvl-demo-examples-"))
            atexit.register(shutil.rmtree, self._folder, True)
        cases: dict[str, ExampleCase] = {}
        for kind in ("2d", "3d"):
            out = self._folder / kind
            logger.info("rendering %d synthetic %s example case(s) into %s", self.per_kind, kind, out)
            # n >= 3 gives every split a case; the examples are the first per_kind cases.
            synthesize(kind, max(3, self.per_kind), self.seed, out)
            questions = _first_english_questions(out)
            infos = [json.loads(line) for line in (out / "cases.jsonl").read_text().splitlines()]
            for i, info in enumerate(infos[: self.per_kind]):
                name = self._name(kind, i)
                question = questions.get(info["id"], "Describe the findings.")
                cases[name] = ExampleCase(name, kind, out / info["file"], question)
        return cases


def _first_english_questions(folder: Path) -> dict[str, str]:
    """case id -> the first English question of its records (marker removed)."""
    out: dict[str, str] = {}
    for split in ("train", "validation", "test"):
        for line in (folder / f"{split}.jsonl").read_text().splitlines():
            record = json.loads(line)
            meta = record.get("meta", {})
            if meta.get("language", "en") != "en" or meta.get("case") in out:
                continue
            text = record["messages"][0]["content"]
            out[meta.get("case")] = text.replace("<image>", "").replace("<volume>", "").strip()
    return out


__all__ = ["ExampleCase", "ExampleCases"]
