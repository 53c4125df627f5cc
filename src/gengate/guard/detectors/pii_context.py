"""Context phrases that must end a window of text ("my name is", "Dr.", "lives at"), checked in one match.

A `$`-anchored `re.search` over a 40-character window tries its alternation at every one of the 40 start
positions. `TrailingContext` instead matches the mirror-image pattern once, at the start of the reversed
window: the same answer for roughly a fortieth of the work. The mirror image is built mechanically by
`reverse_pattern`, so the phrases stay written forwards. Pure; compiles only when a checker is built.
"""

from __future__ import annotations

import re


def reverse_pattern(pattern: str) -> str:
    """A regex for the reversed strings of `pattern` (literals, escapes, `[...]` sets, `?*+` and `(?:a|b)` groups).

    Assertions that look both ways (`\\b`, `\\B`) are symmetric, so they reverse unchanged; anything else that
    would not survive reversal (lookarounds, anchors, backreferences, `.`, lazy quantifiers, `{m,n}`) is refused.
    """
    pos = 0

    def sequence() -> str:
        nonlocal pos
        atoms: list[str] = []
        while pos < len(pattern) and pattern[pos] not in "|)":
            char = pattern[pos]
            if pattern.startswith("(?:", pos):
                pos += 3
                atom = f"(?:{alternation()})"
                if pos >= len(pattern) or pattern[pos] != ")":
                    raise ValueError(f"unbalanced group in {pattern!r}")
                pos += 1
            elif char == "\\":
                atom = pattern[pos : pos + 2]
                if len(atom) < 2 or atom[1] in "AZzG0123456789":
                    raise ValueError(f"cannot reverse {atom!r} in {pattern!r}")
                pos += 2
            elif char == "[":
                close = re.compile(r"\[\^?\]?(?:\\.|[^\]\\])*\]").match(pattern, pos)
                if close is None:
                    raise ValueError(f"unbalanced set in {pattern!r}")
                atom = close.group()
                pos = close.end()
            elif char in "(.^${}?*+":
                raise ValueError(f"cannot reverse {char!r} at {pos} in {pattern!r}")
            else:
                atom = char
                pos += 1
            if pos < len(pattern) and pattern[pos] in "?*+":
                atom += pattern[pos]
                pos += 1
                if pos < len(pattern) and pattern[pos] in "?*+{":
                    raise ValueError(f"cannot reverse a lazy or possessive quantifier in {pattern!r}")
            atoms.append(atom)
        return "".join(reversed(atoms))

    def alternation() -> str:
        nonlocal pos
        branches = [sequence()]
        while pos < len(pattern) and pattern[pos] == "|":
            pos += 1
            branches.append(sequence())
        return "|".join(branches)

    out = alternation()
    if pos != len(pattern):
        raise ValueError(f"unbalanced ')' at {pos} in {pattern!r}")
    return out


class TrailingContext:
    """Whether a window ends with one of `phrases` followed only by characters of `trailing` (a `[...]` set).

    `TrailingContext(p, t).ends(window)` is `re.search(f"(?:{p}){t}*$", window, flags) is not None`.
    """

    __slots__ = ("_reversed",)

    def __init__(self, phrases: str, trailing: str, flags: int = re.IGNORECASE) -> None:
        self._reversed = re.compile(f"{trailing}*(?:{reverse_pattern(phrases)})", flags)

    def ends(self, window: str) -> bool:
        """True when `window` ends with a phrase (and then only trailing characters)."""
        return self._reversed.match(window[::-1]) is not None
