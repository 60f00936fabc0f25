"""WordNet for NLTK's METEOR, built offline from the Debian ``wordnet-base`` files.

NLTK's METEOR looks synonyms up in WordNet, which NLTK normally downloads at run time. medvl never
downloads: it builds an NLTK-layout ``corpora/wordnet`` folder from the WordNet 3.0 database that
the Debian packages ``wordnet-base`` and ``wordnet-sense-index`` install under
``/usr/share/wordnet`` (``apt-get install wordnet-base wordnet-sense-index``), adding the
``lexnames`` file NLTK expects, whose content is the fixed table of lexicographer files from
``lexnames(5WN)``. This is how the golden values in ``eval-golden.json`` were produced.

An existing NLTK WordNet (``nltk.download('wordnet')`` done by the user) is used as is.
"""

from __future__ import annotations

import functools
import logging
import os
import shutil
import warnings
from pathlib import Path

logger = logging.getLogger(__name__)

DEBIAN_WORDNET_DIR = Path("/usr/share/wordnet")

# lexnames(5WN): file number, lexicographer file, syntactic category (1 noun, 2 verb, 3 adj, 4 adv)
_LEXNAMES = [
    "adj.all",
    "adj.pert",
    "adv.all",
    "noun.Tops",
    "noun.act",
    "noun.animal",
    "noun.artifact",
    "noun.attribute",
    "noun.body",
    "noun.cognition",
    "noun.communication",
    "noun.event",
    "noun.feeling",
    "noun.food",
    "noun.group",
    "noun.location",
    "noun.motive",
    "noun.object",
    "noun.person",
    "noun.phenomenon",
    "noun.plant",
    "noun.possession",
    "noun.process",
    "noun.quantity",
    "noun.relation",
    "noun.shape",
    "noun.state",
    "noun.substance",
    "noun.time",
    "verb.body",
    "verb.change",
    "verb.cognition",
    "verb.communication",
    "verb.competition",
    "verb.consumption",
    "verb.contact",
    "verb.creation",
    "verb.emotion",
    "verb.motion",
    "verb.perception",
    "verb.possession",
    "verb.social",
    "verb.stative",
    "verb.weather",
    "adj.ppl",
]
_CATEGORY = {"noun": 1, "verb": 2, "adj": 3, "adv": 4}
_REQUIRED = [
    "data.noun",
    "data.verb",
    "data.adj",
    "data.adv",
    "index.noun",
    "index.verb",
    "index.adj",
    "index.adv",
    "noun.exc",
    "verb.exc",
    "adj.exc",
    "adv.exc",
]


class WordNetUnavailable(RuntimeError):
    """No WordNet database is available offline."""


def _cache_root() -> Path:
    base = os.environ.get("MEDVL_NLTK_DATA")
    if base:
        return Path(base)
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "medvl" / "nltk_data"


def build_nltk_wordnet(source: Path = DEBIAN_WORDNET_DIR, root: Path | None = None) -> Path:
    """Create ``<root>/corpora/wordnet`` from a WordNet 3.0 ``dict`` folder; returns ``root``.

    Files are copied (not linked) because NLTK refuses paths that resolve outside its data roots.

    Args:
        source: folder with ``data.noun``, ``index.noun``, ``*.exc`` ... (Debian: /usr/share/wordnet).
        root: NLTK data root to create (default ``$MEDVL_NLTK_DATA`` or ~/.cache/medvl/nltk_data).
    """
    root = Path(root) if root is not None else _cache_root()
    missing = [f for f in _REQUIRED if not (source / f).is_file()]
    if missing:
        raise WordNetUnavailable(
            f"WordNet database not found in {source} (missing {', '.join(missing)}); install it with "
            "'apt-get install wordnet-base wordnet-sense-index' or run nltk.download('wordnet')"
        )
    target = root / "corpora" / "wordnet"
    if (target / "lexnames").is_file() and all((target / f).is_file() for f in _REQUIRED):
        return root
    tmp = target.with_name("wordnet.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for f in source.iterdir():
        if f.is_file():
            shutil.copyfile(f, tmp / f.name)
    lines = [f"{i:02d}\t{name}\t{_CATEGORY[name.split('.')[0]]}\n" for i, name in enumerate(_LEXNAMES)]
    (tmp / "lexnames").write_text("".join(lines))
    shutil.rmtree(target, ignore_errors=True)
    tmp.rename(target)
    logger.info("built NLTK WordNet from %s in %s", source, target)
    return root


@functools.lru_cache(maxsize=1)
def get_wordnet():
    """A ``WordNetCorpusReader`` usable offline (NLTK's own if present, else built from Debian's).

    Raises:
        WordNetUnavailable: neither NLTK's WordNet nor the Debian database is installed.
    """
    import nltk
    from nltk.corpus.reader.wordnet import WordNetCorpusReader

    # Without the Open Multilingual Wordnet NLTK warns at every load; English is all METEOR uses.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The multilingual functions")
        try:
            found = nltk.data.find("corpora/wordnet")
            return WordNetCorpusReader(found, None)
        except LookupError:
            pass
        root = build_nltk_wordnet()
        if str(root) not in nltk.data.path:
            nltk.data.path.insert(0, str(root))  # NLTK only reads corpora under its data roots
        return WordNetCorpusReader(str(root / "corpora" / "wordnet"), None)


def wordnet_available() -> bool:
    """True when :func:`get_wordnet` can work offline (for skipping tests cleanly)."""
    try:
        get_wordnet()
        return True
    except (WordNetUnavailable, OSError, LookupError):
        return False
