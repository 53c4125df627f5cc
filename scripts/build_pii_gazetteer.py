"""Rebuild the PII name and street gazetteers shipped in `gengate/guard/data/` (a maintainer tool).

Source: Faker's locale provider data (MIT licence, https://github.com/joke2k/faker). Run it against an unpacked
Faker wheel, never at run time::

    pip download faker --no-deps -d faker-dl && unzip -q faker-dl/faker-*.whl -d faker-dl/src
    python scripts/build_pii_gazetteer.py faker-dl/src

Only Latin-script locales are read; entries are lower-cased, de-duplicated and sorted.
"""

from __future__ import annotations

import importlib
import pkgutil
import re
import sys
from collections.abc import Iterable
from pathlib import Path

_LATIN_WORD = re.compile(r"^[A-Za-zÀ-ÖØ-öø-ɏ'’-]{2,}$")
_DATA = Path(__file__).resolve().parent.parent / "data"


def _words(values: Iterable[object]) -> set[str]:
    out: set[str] = set()
    for value in values:
        for part in str(value).split():
            if _LATIN_WORD.match(part):
                out.add(part.lower())
    return out


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
    """Collect first and last names from every Latin-script Faker locale (street types are curated in code)."""
    sys.path.insert(0, str(faker_src))
    first: set[str] = set()
    last: set[str] = set()
    streets: set[str] = set()
    for kind, cls_name in (("person", "Provider"), ("address", "Provider")):
        package = importlib.import_module(f"faker.providers.{kind}")
        for info in pkgutil.iter_modules(package.__path__):
            module = importlib.import_module(f"faker.providers.{kind}.{info.name}")
            if kind == "person":
                first |= _attr(module, cls_name, ("first_names", "first_names_male", "first_names_female"))
                last |= _attr(module, cls_name, ("last_names", "last_names_male", "last_names_female"))
            else:
                streets |= _attr(
                    module,
                    cls_name,
                    ("street_suffixes", "street_suffixes_long", "street_suffixes_short", "street_prefixes"),
                )
    return {"pii_first_names.txt": first, "pii_last_names.txt": last}


def main() -> None:
    """Write the gazetteers next to the package data."""
    for filename, words in build(Path(sys.argv[1])).items():
        header = "# Built from Faker locale data (MIT) by scripts/build_pii_gazetteer.py\n"
        (_DATA / filename).write_text(header + "\n".join(sorted(words)) + "\n", encoding="utf-8")
        print(filename, len(words))


if __name__ == "__main__":
    main()
