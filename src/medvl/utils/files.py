"""Checks of the files a checkpoint is made of, so that a broken one is named before a library trips on it.

Libraries report a truncated ``model.safetensors`` as "incomplete metadata", a missing
``tokenizer.json`` as "install sentencepiece", a broken ``config.json`` as a bare JSON position:
none names the file. These checks read only headers (milliseconds) and raise
:class:`~medvl.errors.MedVLDataError` naming the file and what to do. :func:`load_state_dict` reads a
weights folder (single or sharded) after those checks.
"""

from __future__ import annotations

import json
import struct
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from medvl.errors import MedVLDataError

if TYPE_CHECKING:
    import torch

# files any of which gives a tokenizer its vocabulary
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "tiktoken.model", "qwen.tiktoken")


def read_json(path: str | Path, what: str = "JSON file") -> Any:
    """Parse a JSON file; a missing or broken one is an error naming it.

    Args:
        path: the file.
        what: what the file is (for the message), e.g. "model config".
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise MedVLDataError(f"{what} not found", path=str(path)) from None
    except IsADirectoryError:  # a folder where a file belongs: say so rather than a bare OS error
        raise MedVLDataError(f"{what}: expected a file, found a folder", path=str(path)) from None
    except UnicodeDecodeError as err:
        raise MedVLDataError(f"{what} is not UTF-8 text (byte {err.start})", path=str(path)) from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise MedVLDataError(
            f"{what} is not valid JSON: {err.msg} at line {err.lineno}, column {err.colno} "
            "(a truncated copy or a hand edit?)",
            path=str(path),
        ) from None


def safetensors_problem(path: str | Path) -> str | None:
    """What is wrong with a safetensors file's framing (header and data extent), or None.

    Args:
        path: a ``.safetensors`` file.
    """
    path = Path(path)
    size = path.stat().st_size
    if size < 8:
        return f"only {size} bytes: truncated (a safetensors file starts with an 8-byte header length)"
    with path.open("rb") as fh:
        (n,) = struct.unpack("<Q", fh.read(8))
        if n > size - 8:
            return f"its header claims {n} bytes but the file has {size}: truncated or not a safetensors file"
        try:
            header = json.loads(fh.read(n))
        except (json.JSONDecodeError, UnicodeDecodeError):
            return "its header is not valid JSON: corrupt or not a safetensors file"
    if not isinstance(header, dict):
        return "its header is not a JSON object: corrupt"
    ends = [
        int(v["data_offsets"][1])
        for k, v in header.items()
        if k != "__metadata__" and isinstance(v, dict) and "data_offsets" in v
    ]
    needed = 8 + n + max(ends, default=0)
    if needed > size:
        return f"truncated: its tensors need {needed} bytes, the file has {size}"
    return None


def check_weights(folder: str | Path) -> None:
    """Refuse truncated or corrupt ``*.safetensors`` files in a folder, naming the file.

    Args:
        folder: a checkpoint folder.
    """
    for path in sorted(Path(folder).glob("*.safetensors")):
        problem = safetensors_problem(path)
        if problem is not None:
            raise MedVLDataError(f"weights file is damaged: {problem}; copy or download it again", path=str(path))


def check_model_folder(folder: str | Path) -> None:
    """Refuse a model folder whose config, weights or tokenizer is missing or damaged, naming the file.

    Args:
        folder: a medvl (or Hugging Face) checkpoint folder.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: no such model folder")
    config = folder / "config.json"
    if not config.is_file():
        raise MedVLDataError("not a model folder: it has no config.json", path=str(folder))
    read_json(config, "model config")
    weights = list(folder.glob("*.safetensors")) + list(folder.glob("*.bin"))
    if not weights:
        raise MedVLDataError("the model folder has no weights (model.safetensors)", path=str(folder))
    check_weights(folder)
    if not any((folder / name).is_file() for name in TOKENIZER_FILES):
        raise MedVLDataError(
            f"the model folder has no tokenizer ({' / '.join(TOKENIZER_FILES[:2])} missing); copy the "
            "tokenizer files of the checkpoint next to its config.json",
            path=str(folder),
        )
    for name in ("tokenizer.json", "tokenizer_config.json", "processor_config.json", "preprocessor_config.json"):
        if (folder / name).is_file():
            read_json(folder / name, name)


def checkpoint_problem(folder: str | Path) -> str | None:
    """Why a training checkpoint folder cannot be resumed from (None: it looks complete).

    Reads headers only: safetensors framing, JSON files, and the zip directory of ``torch.save``
    files (optimizer, scheduler, RNG state), which a truncated file lacks.

    Args:
        folder: a ``checkpoint-N`` folder.
    """
    folder = Path(folder)
    try:
        for path in sorted(folder.iterdir()):
            if path.suffix == ".safetensors":
                problem = safetensors_problem(path)
                if problem:
                    return f"{path.name}: {problem}"
            elif path.suffix == ".json":
                try:
                    json.loads(path.read_text(encoding="utf-8"))
                except (json.JSONDecodeError, UnicodeDecodeError) as err:
                    return f"{path.name}: not valid JSON ({err})"
            elif path.suffix in (".pt", ".pth", ".bin") and path.is_file():
                try:
                    with zipfile.ZipFile(path):
                        pass
                except zipfile.BadZipFile:
                    return f"{path.name}: truncated or corrupt (no zip directory)"
        if not (folder / "trainer_state.json").is_file():
            return "trainer_state.json missing"
    except OSError as err:
        return str(err)
    return None


# the saved layouts of a Hugging Face weights folder, in the order transformers prefers them
WEIGHT_LAYOUTS = (
    ("model.safetensors.index.json", "model.safetensors"),
    ("pytorch_model.bin.index.json", "pytorch_model.bin"),
)


def _weight_files(folder: Path) -> list[Path]:
    """The weight files of a folder: the shards an index names, else the single file."""
    for index_name, single_name in WEIGHT_LAYOUTS:
        if (folder / index_name).is_file():
            index = read_json(folder / index_name, "weights index")
            return [folder / name for name in sorted(set(index["weight_map"].values()))]
        if (folder / single_name).is_file():
            return [folder / single_name]
    raise MedVLDataError(
        "no model.safetensors(.index.json) or pytorch_model.bin(.index.json) in the folder", path=str(folder)
    )


def load_state_dict(folder: str | Path) -> dict[str, torch.Tensor]:
    """Every tensor of a Hugging Face weights folder (single or sharded safetensors, or pytorch ``.bin``).

    Args:
        folder: the checkpoint folder.

    Raises:
        MedVLDataError: no weights, a shard the index names is missing, or a damaged safetensors file.
    """
    import torch
    from safetensors.torch import load_file

    folder = Path(folder)
    check_weights(folder)  # a truncated file is named here, not reported as "incomplete metadata"
    state_dict: dict[str, torch.Tensor] = {}
    for path in _weight_files(folder):
        if not path.is_file():
            raise MedVLDataError(f"shard {path.name} named in the weights index is missing", path=str(folder))
        if path.suffix == ".safetensors":
            state_dict.update(load_file(path))
        else:
            state_dict.update(torch.load(path, map_location="cpu", weights_only=True))
    return state_dict
