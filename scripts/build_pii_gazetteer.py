"""Rebuild the PII gazetteers shipped in `gengate/guard/data/` (a maintainer tool).

Source: Faker's locale provider data (MIT licence, https://github.com/joke2k/faker). Run it against an unpacked
Faker wheel, never at run time::

    pip download faker --no-deps -d faker-dl && unzip -q faker-dl/faker-*.whl -d faker-dl/src
    python scripts/build_pii_gazetteer.py faker-dl/src

Only Latin-script entries are kept; entries are lower-cased, de-duplicated and sorted. Files written:

- `pii_first_names.txt`, `pii_last_names.txt`: one word a line (person providers).
- `pii_places.txt`: one place name a line, multi-word names kept whole (address providers: cities, countries,
  states, provinces, regions, counties, cantons, departments). Faker's `geo` provider is *not* read: its data is
  CC BY 3.0 (geonames), not MIT.
- `pii_organisations.txt`: company prefixes, suffixes and the `large_companies` lists (company providers).
- `pii_languages.txt`: language names (the person provider), which double as nationality adjectives.
- `pii_jobs.txt`: job titles (job providers, English locales).
- `pii_common_words.txt` (only with `--datasets DIR`): lower-case words seen at least twice in lower case,
  not after a sentence end, in the texts of permissively licenced sets under DIR (self-instruct-benign and
  deepset-prompt-injections: Apache-2.0; injecguard-notinject, jailbreakbench-artifacts, bipia: MIT), plus
  Faker's English lorem words. Only the word list is kept, no text. It tells the tagger which capitalised
  words are ordinary English ("Guilty Pleasures", "Website") rather than names.

The tagger (`pii_tagger.py`) uses all of them as features; the rule-based name recognizer only the names.
"""

from __future__ import annotations

import argparse
import importlib
import json
import pkgutil
import re
import sys
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

_LATIN_WORD = re.compile(r"^[A-Za-zÀ-ÖØ-öø-ɏ'’-]{2,}$")
_LATIN_PHRASE = re.compile(r"^[A-Za-zÀ-ÖØ-öø-ɏ'’.()&/ -]{2,}$")
_DATA = Path(__file__).resolve().parent.parent / "src" / "gengate" / "guard" / "data"
_PLACE_ATTRS = (
    "cities",
    "city_names",
    "countries",
    "states",
    "state",
    "provinces",
    "province",
    "regions",
    "region",
    "counties",
    "county",
    "cantons",
    "departments",
)


def _words(values: Iterable[object]) -> set[str]:
    out: set[str] = set()
    for value in values:
        for part in str(value).split():
            if _LATIN_WORD.match(part):
                out.add(part.lower())
    return out


def _phrases(values: Iterable[object]) -> set[str]:
    out: set[str] = set()
    for value in values:
        # Some lists hold (code, name) pairs: keep the name.
        text = value[-1] if isinstance(value, tuple) else value
        phrase = " ".join(str(text).split()).lower()
        if _LATIN_PHRASE.match(phrase) and any(ch.isalpha() for ch in phrase):
            out.add(phrase)
    return out


def _values(module: object, cls_name: str, names: tuple[str, ...]) -> list[object]:
    cls = getattr(module, cls_name, None)
    out: list[object] = []
    for name in names:
        value = getattr(cls, name, None) if cls is not None and name in vars(cls) else None
        if isinstance(value, dict):
            out.extend(value.keys())
        elif isinstance(value, list | tuple):
            out.extend(value)
    return out


def _modules(kind: str) -> Iterable[object]:
    package = importlib.import_module(f"faker.providers.{kind}")
    yield package
    for info in pkgutil.iter_modules(package.__path__):
        yield importlib.import_module(f"faker.providers.{kind}.{info.name}")


def _attr(module: object, cls_name: str, names: tuple[str, ...]) -> set[str]:
    cls = getattr(module, cls_name, None)
    out: set[str] = set()
    for name in names:
        value = getattr(cls, name, None)
        if isinstance(value, dict):
            out |= _words(value.keys())
        elif isinstance(value, list | tuple):
            out |= _words(value)
    return out


def build(faker_src: Path) -> dict[str, set[str]]:
    """Collect the gazetteers from every Latin-script Faker locale (street types are curated in code)."""
    sys.path.insert(0, str(faker_src))
    first: set[str] = set()
    last: set[str] = set()
    package = importlib.import_module("faker.providers.person")
    for info in pkgutil.iter_modules(package.__path__):
        module = importlib.import_module(f"faker.providers.person.{info.name}")
        first |= _attr(module, "Provider", ("first_names", "first_names_male", "first_names_female"))
        last |= _attr(module, "Provider", ("last_names", "last_names_male", "last_names_female"))
    places: set[str] = set()
    for module in _modules("address"):
        places |= _phrases(_values(module, "Provider", _PLACE_ATTRS))
    organisations: set[str] = set()
    for module in _modules("company"):
        organisations |= _phrases(
            _values(module, "Provider", ("company_prefixes", "company_suffixes", "large_companies"))
        )
    languages = _phrases(_values(package, "Provider", ("language_names",)))
    jobs: set[str] = set()
    for module in _modules("job"):
        if module.__name__.rsplit(".", 1)[-1].startswith(("en", "job")):
            jobs |= _phrases(_values(module, "Provider", ("jobs",)))
    return {
        "pii_first_names.txt": first,
        "pii_last_names.txt": last,
        "pii_places.txt": places,
        "pii_organisations.txt": organisations,
        "pii_languages.txt": languages,
        "pii_jobs.txt": jobs,
    }


# Permissively licenced text sets under ../shared/datasets (see the module docstring).
COMMON_WORD_SOURCES = (
    "self-instruct-benign",
    "deepset-prompt-injections",
    "injecguard-notinject",
    "jailbreakbench-artifacts",
    "bipia",
)
_MID_SENTENCE_WORD = re.compile(r"(?<![.!?]\s)(?<!^)\b[a-z]{2,}\b", re.MULTILINE)


def common_words(datasets: Path, faker_src: Path) -> set[str]:
    """Words used in lower case in ordinary text (see the module docstring)."""
    counts: Counter[str] = Counter()
    for name in COMMON_WORD_SOURCES:
        for line in (datasets / name / "normalized.jsonl").read_text(encoding="utf-8").splitlines():
            if line.strip():
                counts.update(_MID_SENTENCE_WORD.findall(str(json.loads(line)["text"])))
    sys.path.insert(0, str(faker_src))
    lorem = importlib.import_module("faker.providers.lorem.en_US")
    return {w for w, c in counts.items() if c >= 2} | _words(lorem.Provider.word_list)


def main() -> None:
    """Write the gazetteers next to the package data."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("faker_src", type=Path, help="an unpacked Faker wheel")
    parser.add_argument("out", type=Path, nargs="?", default=_DATA)
    parser.add_argument("--datasets", type=Path, help="../shared/datasets, for pii_common_words.txt")
    args = parser.parse_args()
    lists = build(args.faker_src)
    if args.datasets is not None:
        lists["pii_common_words.txt"] = common_words(args.datasets, args.faker_src)
    out = args.out
    for filename, words in lists.items():
        source = (
            "permissive text sets and Faker (see its docstring)" if "common" in filename else "Faker locale data (MIT)"
        )
        header = f"# Built from {source} by scripts/build_pii_gazetteer.py\n"
        (out / filename).write_text(header + "\n".join(sorted(words)) + "\n", encoding="utf-8")
        print(filename, len(words))


if __name__ == "__main__":
    main()
