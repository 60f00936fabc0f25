"""The recipe files medvl ships (``configs/``), found from a source checkout and from an installed package.

In the repository the recipes live in ``configs/`` (``configs/medm-vl-2d/finetune.yaml``,
``configs/deepspeed/zero3.json``, ``configs/tiny.yaml``). A wheel installs the same tree as data files
under ``<prefix>/share/medvl/configs/`` (``[tool.setuptools.data-files]`` in pyproject.toml), so that
``pip install medvl`` users can write::

    medvl train medm-vl-2d/finetune_lora model.path=... data.train=[my.jsonl]
    medvl build tiny --out runs/tiny

A name is tried as a path first (relative to the working directory); otherwise it is looked up, with
or without a leading ``configs/`` and with or without its suffix, in the checkout's ``configs/`` and
then in the installed copy. The value ``train.deepspeed: configs/deepspeed/zero3.json`` inside the
bundled recipes resolves the same way from any working directory.
"""

from __future__ import annotations

import site
import sys
from pathlib import Path

BUNDLED_DIR = "configs"


def config_roots() -> list[Path]:
    """Folders holding medvl's bundled configs, most specific first (source checkout, then installs)."""
    roots = []
    checkout = Path(__file__).resolve().parents[2] / BUNDLED_DIR  # src/medvl/recipes.py -> <repo>/configs
    candidates = [checkout]
    for base in (sys.prefix, getattr(site, "USER_BASE", None), sys.base_prefix):
        if base:
            candidates.append(Path(base) / "share" / "medvl" / BUNDLED_DIR)
    for folder in candidates:
        if folder.is_dir() and folder not in roots:
            roots.append(folder)
    return roots


def bundled_configs(suffixes: tuple[str, ...] = (".yaml", ".yml")) -> list[str]:
    """Names of the bundled config files (relative, without suffix), e.g. ``medm-vl-2d/finetune``.

    Args:
        suffixes: which files count.
    """
    names: set[str] = set()
    for root in config_roots():
        for path in root.rglob("*"):
            if path.is_file() and path.suffix in suffixes:
                names.add(path.relative_to(root).with_suffix("").as_posix())
    return sorted(names)


def resolve_config_file(name: str | Path, suffixes: tuple[str, ...] = (".yaml", ".yml")) -> Path:
    """The file ``name`` refers to: an existing path, else a bundled config of that name.

    Args:
        name: a path, or a bundled name such as ``medm-vl-2d/finetune``, ``configs/deepspeed/zero3.json``.
        suffixes: suffixes tried when ``name`` has none (``(".json",)`` for DeepSpeed configs).

    Raises:
        FileNotFoundError: neither a file nor a bundled config; the message lists the bundled ones.
    """
    path = Path(name).expanduser()
    if path.is_file():
        return path
    relative = path.as_posix()
    if relative.startswith(BUNDLED_DIR + "/"):
        relative = relative[len(BUNDLED_DIR) + 1 :]
    if not path.is_absolute():
        tries = [relative] if Path(relative).suffix else [relative + s for s in suffixes]
        for root in config_roots():
            for candidate in tries:
                if (root / candidate).is_file():
                    return root / candidate
    available = bundled_configs(suffixes)
    raise FileNotFoundError(
        f"{name}: no such file, and no bundled config of that name; bundled: "
        f"{', '.join(available) if available else 'none found (is medvl installed with its configs?)'}"
    )


__all__ = ["bundled_configs", "config_roots", "resolve_config_file"]
