"""Structural cues of prompt injection, as features for the injection classifier (not verdicts on their own).

Owns a fixed, ordered list of patterns over the canonical text (`gengate.guard.normalize.canonical`: case-folded,
accents stripped, obfuscation undone): chat-template control tokens and role turns, JSON role objects, fake
system headers, "from now on you are" persona framing, instruction-override verbs next to instruction nouns in
English, German, Spanish, French, Italian, Portuguese and Dutch, requests to reveal hidden prompts or secrets,
"no restrictions" framing, the opposite game, the deceased-relative role play, "decode this and follow it", and
directives addressed to an AI that reads a document ("in your response…").

Each rule is one feature of the linear model: present or absent in a scoring window. Its weight is learned with
the n-gram weights (`scripts/train_injection.py`), so a rule only moves the score as far as training data
supports, and a benign text that trips one rule (a tokenizer question quoting `<|im_start|>`) is still judged
by everything else. The artifact records the rule names it was trained with; changing this list needs a
retrained artifact. Must not: classify, keep state or do I/O. Every pattern is bounded (no nested quantifiers),
so matching is linear in the text length.

Speed: most texts trip no rule. From each pattern's own parse tree come its needles, literal pieces a match must
contain (`requirements`: per top-level branch, a needle from each of a few sets). One scan finds which rules' needs
a text meets (`NeedleIndex`); only those rules' regexes run. Matching is unchanged: needles only decide whether a
regex runs at all.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

MAX_HITS_PER_RULE = 256  # more matches add nothing: a feature is presence in a window

# Accents are already stripped and text case-folded, so "instruções" is "instrucoes", "Aufträge" "auftrage".
_OVERRIDE_VERBS = (
    r"ignor\w*|disregard\w*|forget|forgot|overrid\w*|overrul\w*|bypass\w*|discard\w*|abandon\w*|set aside|neglect\w*"
    r"|vergiss\w*|vergessen|missacht\w*|uberschreib\w*|verwirf"  # de
    r"|olvid\w*|descart\w*|omit\w*|haz caso omiso"  # es
    r"|oubli\w*|ne tiens? (?:plus |pas )?compte|fais abstraction"  # fr
    r"|dimentic\w*|trascur\w*|tralasci\w*|scorda\w*|non considerare"  # it
    r"|esquec\w*|esqueca\w*|desconsider\w*"  # pt
    r"|negeer\w*|vergeet"  # nl
)
_INSTRUCTION_NOUNS = (
    r"instructions?|directions?|directives?|rules?|guidelines?|prompts?|orders?|commands?|constraints?|restrictions?"
    r"|polic(?:y|ies)|programming|guardrails?|assignments?|tasks?|training"
    r"|anweisung\w*|regeln|richtlinie\w*|vorgaben|befehle?|auftrag\w*|anordnung\w*|instruktion\w*|aufgabe\w*"
    r"|instrucciones|reglas|directrices|indicaciones|ordenes|normas"
    r"|regles|consignes|ordres"
    r"|istruzioni|regole|direttive|indicazioni|ordini|linee guida"
    r"|instrucoes|regras|diretrizes|ordens|orientacoes"
    r"|instructies|regels|richtlijnen|opdrachten|bevelen"
)
_PRIOR = (
    r"previous\w*|prior|above|earlier|preceding|before|beforehand|so far|until now|original|initial"
    r"|everything (?:you (?:were|have been) told|we discussed|i said)"
    r"|vorherig\w*|bisherig\w*|obig\w*|davor|zuvor|vorher|vorangegangen\w*"
    r"|anterior\w*|previas?|previos?|precedent\w*|ci-dessus|plus haut|precedenti|sopra|vorige|eerdere|bovenstaande"
)
_ROLES = r"system|developer|admin|administrator|operator|assistant|root"


try:  # the standard library's regex parser, for the needles; without it rules simply run unfiltered
    from re import _parser as _sre  # type: ignore[attr-defined]
except ImportError:  # pragma: no cover - a Python without re._parser
    _sre = None


@dataclass(frozen=True, slots=True)
class Rule:
    """One structural cue: a stable name (recorded in the artifact) and its pattern over canonical text."""

    name: str
    pattern: re.Pattern[str]


def _rule(name: str, pattern: str) -> Rule:
    return Rule(name, re.compile(pattern))


def needles(pattern: re.Pattern[str]) -> tuple[str, ...] | None:
    """Substrings one of which every match of `pattern` contains, or None when none can be derived.

    Read from the parse tree. A match of a sequence matches each of its items in turn, so it contains the needles
    of any one item (a group, an alternation — the union of its branches' needles, none when a branch has none —
    or a repeat of at least once), and the concatenation of adjacent items whose matches form a small finite set
    of strings ("(?:play|assume) the (?:role|persona)" → "play the role", …; zero-width items add nothing).
    Of a sequence's candidates the set whose shortest needle is longest wins, then the smaller set.
    Case-insensitive patterns get none.
    """
    if _sre is None or pattern.flags & re.IGNORECASE:
        return None
    found = _best(_candidates(_sre.parse(pattern.pattern, pattern.flags)))
    return _ordered(found) if found else None


Requirement = tuple[tuple[str, ...], ...]  # needle sets a match holds one needle of each of


def requirements(pattern: re.Pattern[str]) -> tuple[Requirement, ...] | None:
    """What a match of `pattern` must contain, as alternatives (one per top-level branch) of needle sets: every
    match satisfies one alternative, holding a needle of each of its sets (a sequence's candidates, the best
    few). Stricter than `needles` (both an override verb and an instruction noun, not either); None when none."""
    if _sre is None or pattern.flags & re.IGNORECASE:
        return None
    items = _sre.parse(pattern.pattern, pattern.flags)
    branches = [items] if len(items) != 1 or items[0][0] is not _sre.BRANCH else items[0][1][1]
    out = []
    for branch in branches:
        ranked = sorted(_candidates(branch), key=_rank, reverse=True)
        if not ranked:
            return None
        # Short needles are everywhere ("(", "end "): each costs a step of the scan and rules little out.
        found = [ranked[0], *(c for c in ranked[1:_MAX_SETS] if _rank(c)[0] >= _MIN_EXTRA_NEEDLE)]
        out.append(tuple(_ordered(c) for c in found))
    return tuple(out)


_MAX_EXACT = 256  # largest set of exact strings expanded from adjacent items
_MAX_SETS = 2  # needle sets kept per alternative of a requirement
_MIN_EXTRA_NEEDLE = 4  # shortest needle of a set kept besides the best one


def _candidates(items: Sequence[tuple[Any, Any]]) -> list[frozenset[str]]:
    """Needle sets of a sequence: a match of it holds a needle of each."""
    found: list[frozenset[str]] = []

    def consider(candidate: frozenset[str] | None) -> None:
        if candidate and min(map(len, candidate)) > 0:
            found.append(candidate)

    run: frozenset[str] = frozenset([""])  # the exact strings the current run of adjacent items can match
    for op, av in items:
        exact = _exact_item(op, av)
        if exact is not None and len(run) * len(exact) <= _MAX_EXACT:
            run = frozenset(a + b for a in run for b in exact)
            continue
        consider(run)
        run = exact if exact is not None else frozenset([""])
        if op is _sre.SUBPATTERN and not av[1] and not av[2]:  # a group that sets no flags
            consider(_best(_candidates(av[3])))
        elif op is _sre.ATOMIC_GROUP:
            consider(_best(_candidates(av)))
        elif op in (_sre.MAX_REPEAT, _sre.MIN_REPEAT, _sre.POSSESSIVE_REPEAT) and av[0] >= 1:
            consider(_best(_candidates(av[2])))
        elif op is _sre.BRANCH:
            branches = [_best(_candidates(b)) for b in av[1]]
            if all(branches):
                consider(frozenset().union(*branches))  # type: ignore[arg-type]
        # Anything else (classes, optional items) promises no literal and only ends the run.
    consider(run)
    return found


def _best(candidates: list[frozenset[str]]) -> frozenset[str] | None:
    return max(candidates, key=_rank) if candidates else None


def _ordered(needle_set: frozenset[str]) -> tuple[str, ...]:
    return tuple(sorted(needle_set, key=lambda n: (-len(n), n)))


def _exact_item(op: Any, av: Any) -> frozenset[str] | None:
    """Every string one item can match, when that is a small finite set (None otherwise)."""
    if op is _sre.LITERAL:
        return frozenset(chr(av))
    if op is _sre.IN and all(o is _sre.LITERAL for o, _ in av):
        return frozenset(chr(c) for _, c in av)
    if op in (_sre.AT, _sre.ASSERT, _sre.ASSERT_NOT):
        return frozenset([""])  # zero-width: the text matched around it stays adjacent
    if op is _sre.SUBPATTERN and not av[1] and not av[2]:
        return _exact_sequence(av[3])
    if op is _sre.BRANCH:
        branches = [_exact_sequence(b) for b in av[1]]
        if any(b is None for b in branches):
            return None
        union: frozenset[str] = frozenset().union(*branches)  # type: ignore[arg-type]
        return union if len(union) <= _MAX_EXACT else None
    if op in (_sre.MAX_REPEAT, _sre.MIN_REPEAT, _sre.POSSESSIVE_REPEAT) and av[1] <= 1:  # x? (or x{1})
        body = _exact_sequence(av[2])
        return None if body is None else body | ({""} if av[0] == 0 else set())
    return None


def _exact_sequence(items: Sequence[tuple[Any, Any]]) -> frozenset[str] | None:
    out = frozenset([""])
    for op, av in items:
        exact = _exact_item(op, av)
        if exact is None or len(out) * len(exact) > _MAX_EXACT:
            return None
        out = frozenset(a + b for a in out for b in exact)
    return out


def _rank(candidate: frozenset[str]) -> tuple[int, int]:
    return min(map(len, candidate)), -len(candidate)


RULES: tuple[Rule, ...] = (
    # Control tokens of common chat templates (ChatML, Llama 2/3, Gemma, Phi) written into text.
    _rule(
        "chat_template_token",
        r"<\|(?:im_start|im_end|im_sep|endoftext|eot_id|start_header_id|end_header_id|begin_of_text|system|user"
        r"|assistant|end)\|>|\[/?inst\]|<</?sys>>|<(?:start|end)_of_turn>",
    ),
    # …opening a system/developer/assistant turn, or a filled Llama 2 system block: what an injection needs them for
    # (a question that only names a token, "where does <<SYS>> go?", opens no turn).
    _rule(
        "chat_template_role_turn",
        r"(?:<\|im_start\|>|<\|start_header_id\|>|<start_of_turn>)\s*(?:system|developer|assistant|model)\b"
        r"|<<sys>>[^<]{8,600}<</sys>>",
    ),
    # {"role": "system", ...}: a message object of the chat API, as if the text could add turns.
    _rule("json_role_object", r"[\"']role[\"']\s*:\s*[\"'](?:system|developer|assistant)[\"']"),
    # "### SYSTEM:", "[system]", "<system>", "</user>", "---- end of document ----", "system override".
    _rule(
        "fake_system_boundary",
        rf"(?:(?:^|\n)\s*(?:\[|\()|(?:^|\s)(?:#{{2,}}|\*{{2,}}|={{2,}}))\s*(?:new |updated )?(?:{_ROLES})"
        rf"(?: message| prompt| note| instructions?| override| update| directive)?"
        rf"\s*(?:#{{2,}}|\*{{2,}}|={{2,}}|\]|\)|:)"
        rf"|</?(?:system|instructions?|admin|sys|user|assistant)>"
        r"|(?:end|ende|fin|fine|fim|einde) (?:of |der |de |del |do |da |van )?(?:the )?(?:user ?input|input"
        r"|prompt|document|context|conversation|eingabe|dokument\w*|documento|entrada)\b"
        rf"|(?:{_ROLES}) (?:override|directive|command|update)|priority: ?(?:critical|urgent|high)",
    ),
    # An override verb and an instruction noun in one clause: "ignore your rules", "vergiss die Anweisungen".
    _rule(
        "override_instructions",
        rf"\b(?:{_OVERRIDE_VERBS})\b[^.!?\n]{{0,48}}?\b(?:{_INSTRUCTION_NOUNS})\b",
    ),
    # An override verb pointing back at what came before: "forget everything above", "ignora lo anterior".
    _rule("override_prior", rf"\b(?:{_OVERRIDE_VERBS})\b[^.!?\n]{{0,40}}?\b(?:{_PRIOR})\b"),
    # New instructions replacing the old ones, or a turn that starts "from now on".
    _rule(
        "new_instructions",
        r"\b(?:new|updated|revised|real|actual|true) (?:instructions?|task|rules?|directives?|assignment|orders?)\b"
        r"|\bneue\w* (?:anweisung|aufgabe|regel)\w*|\bnuev[ao]s? (?:instruccion\w*|tarea|reglas?)"
        r"|\bnouvel\w* (?:consigne|instruction|tache|regle)\w*|\bnuov[aeio] (?:istruzion\w*|compito|regol\w*)"
        r"|\bnov[ao]s? (?:instruc\w*|tarefa|regras?)|\bnieuwe (?:instructie|opdracht|taak|regel)\w*"
        r"|\bfrom now on\b|\bab (?:jetzt|sofort|nun)\b|\ba partir de (?:ahora|agora|maintenant)\b|\bdesormais\b"
        r"|\bd(?:a|')(?: )?ora in poi\b|\bde agora em diante\b|\bvanaf nu\b|\bvoortaan\b",
    ),
    # Persona framing: "you are now …", "act as …", "pretend to be …", "stay in character".
    _rule(
        "persona_switch",
        r"\byou are (?:now|no longer)\b|\byou(?:'re| are) going to (?:act|pretend|play)\b"
        r"|\b(?:act|behave|respond|answer|reply|speak|talk) (?:only |exclusively )?(?:as|like) "
        r"(?:if you (?:were|are) )?(?:a|an|my|the|dan)\b|\bpretend (?:to be|you are|you're|that you)\b"
        r"|\bstay in character\b"
        r"|\b(?:play|take on|assume) the (?:role|persona|character)\b|\broleplay as\b"
        r"|\b(?:du bist|sie sind) (?:jetzt|nun|ab jetzt|ab sofort|kein\w*)\b"
        r"|\b(?:tu|handle|verhalte dich) (?:so,? )?als\b"
        r"|\bahora eres\b|\bactua como\b|\bfinge (?:ser|que)\b|\bhaz(?: de| como)\b"
        r"|\b(?:tu es|vous etes) (?:maintenant|desormais)\b|\bfais semblant\b|\bagis comme\b|\bjoue le role\b"
        r"|\b(?:ora sei|adesso sei|sei ora)\b|\bfingi di\b|\b(?:comportati|agisci) come\b"
        r"|\bagora (?:voce e|es)\b|\bfinja (?:ser|que)\b|\b(?:aja|comporte-se) como\b"
        r"|\bje bent nu\b|\bdoe alsof\b|\bgedraag je als\b|\bspeel de rol\b",
    ),
    # "No rules / without restrictions / uncensored / developer mode".
    _rule(
        "no_restrictions",
        r"\b(?:no|without|free (?:of|from)|zero|any|all) (?:\w+ ){0,2}?(?:rules|restrictions|limits|limitations"
        r"|filters?|censorship|content polic\w*|ethic\w*|moral\w*|boundaries|safeguards|guardrails)\b"
        r"|\b(?:unfiltered|uncensored|unrestricted|unbound|unshackled|jailbr\w*|developer mode|dan mode"
        r"|do anything now|god mode|evil mode|amoral)\b"
        r"|\bohne (?:\w+ )?(?:regeln|einschrankung\w*|filter|grenzen|zensur|beschrankung\w*)\b"
        r"|\bsin (?:\w+ )?(?:restricciones|reglas|filtros?|limites|censura)\b"
        r"|\bsans (?:\w+ )?(?:restriction|regle|filtre|limite|censure)s?\b"
        r"|\bsenza (?:\w+ )?(?:restrizioni|regole|filtri|limiti|censura)\b"
        r"|\bsem (?:\w+ )?(?:restricoes|regras|filtros?|limites|censura)\b"
        r"|\bzonder (?:\w+ )?(?:beperkingen|regels|filters?|grenzen|censuur)\b",
    ),
    # Asking for what the model must keep: its hidden prompt, instructions, secrets, credentials.
    _rule(
        "reveal_hidden",
        r"\b(?:reveal|print|show|output|display|repeat|leak|tell|give|write out|dump|disclose|spell out|recite|return"
        r"|zeig\w*|gib|verrat\w*|nenn\w*|wiederhol\w*|ausgeben|muestra\w*|revela\w*|dime|imprim\w*|repit\w*"
        r"|montre\w*|revele\w*|affich\w*|donne\w*|repete\w*|dis-moi|mostra\w*|rivela\w*|stampa\w*|dimmi|ripet\w*"
        r"|mostre\w*|revel\w*|diga|repit\w*|toon|onthul\w*|geef|herhaal)\b[^.!?\n]{0,40}?"
        r"\b(?:(?:your|the|dein\w*|ihr\w*|tu|tus|el|ton|tes|votre|vos|le|il tuo|le tue|o seu|as suas|je|jouw|de)"
        r" (?:\w+ )?(?:system ?prompt|initial prompt|original prompt|hidden \w+|secret\w*|instructions|password"
        r"|passwort|systemprompt|anweisungen|contrasena|instrucciones|mot de passe|consignes|istruzioni|senha"
        r"|instrucoes|wachtwoord|instructies|prompt)|(?:api|secret|private) keys?|everything above)\b",
    ),
    # The opposite game: the rules now mean their opposite.
    _rule(
        "opposite_game",
        r"\bopposite (?:game|day|mode|world)\b|\b(?:means?|do|does) (?:exactly )?the opposite\b"
        r"|\b(?:whatever|everything|anything) you (?:were|are|have been) (?:told|instructed|asked) not to\b"
        r"|\b(?:reverse|invert|flip) (?:all |every )?(?:of )?(?:your|the) (?:rules|instructions|guidelines)\b",
    ),
    # The deceased-relative role play ("act as my late grandmother who used to tell me …").
    _rule(
        "deceased_relative",
        r"\b(?:late|deceased|dead|departed) (?:grand(?:mother|ma|father|pa|mom|dad)|granny|nana|mother|father"
        r"|mom|mum|dad)\b|\b(?:grandma|granny|grandmother|grandpa|grandfather) (?:used to|would always|would) "
        r"(?:tell|read|say|sing|recite|whisper)\b",
    ),
    # "Decode this and do what it says": an encoded payload with an order to carry it out.
    _rule(
        "decode_and_follow",
        r"\b(?:decode|decrypt|decipher|unscramble|translate|reverse|rot-?13|base ?64|hex)\b[^.!?]{0,80}?"
        r"\b(?:follow|do what it says|execute|obey|carry out|comply|act on|perform|do as it says)\b",
    ),
    # Directives to the AI that will read a document: "in your response", "note to the assistant".
    _rule(
        "addressed_to_ai",
        r"\b(?:in|into|to|within|throughout|at the (?:end|start|beginning) of|end|begin|start|include in|add to)"
        r" your (?:response|answer|reply|output|summary|code|solution|implementation|translation|analysis)\b"
        r"|\b(?:note|message|instructions?|attention) (?:to|for) (?:the |any )?(?:ai|assistant|llm|model|chatbot"
        r"|language model|bot)\b|\b(?:ai|assistant|llm|chatbot|language model)s? (?:reading|processing|summari[sz]ing"
        r"|parsing|that reads?) (?:this|these)\b|\bwhen (?:you )?(?:summari[sz]e|summari[sz]ing|answer|answering"
        r"|respond|responding|reply|replying)\b",
    ),
)
RULE_NAMES: tuple[str, ...] = tuple(r.name for r in RULES)

I64Array = npt.NDArray[np.int64]


@dataclass(frozen=True, slots=True)
class NeedleIndex:
    """Which rules can match a text, from one scan for the needles of all their `requirements`.

    `pattern` is a trie of every needle, so at a position it matches the longest needle starting there; any other
    needle starting there is a prefix of that one (both are the text from that position on), so `keys_of` maps
    each needle to the (rule, alternative, set) keys of it and of its prefixes. Searching again from the next
    character visits every position where a needle starts, so every needle in the text is seen: a rule is a
    candidate exactly when one of its alternatives has a needle of each of its sets in the text.
    """

    pattern: re.Pattern[str]
    keys_of: dict[str, frozenset[tuple[int, int, int]]]
    shapes: tuple[tuple[int, ...] | None, ...]  # per rule, sets per alternative; None: no requirement, always run

    @classmethod
    def of(cls, rules: Sequence[Rule]) -> NeedleIndex:
        """The index of `rules` (numbered in order)."""
        owners: dict[str, set[tuple[int, int, int]]] = {}
        shapes: list[tuple[int, ...] | None] = []
        for i, rule in enumerate(rules):
            required = requirements(rule.pattern)
            shapes.append(None if required is None else tuple(len(alt) for alt in required))
            for j, alternative in enumerate(required or ()):
                for k, needle_set in enumerate(alternative):
                    for needle in needle_set:
                        owners.setdefault(needle, set()).add((i, j, k))
        keys_of = {n: frozenset(key for end in range(1, len(n) + 1) for key in owners.get(n[:end], ())) for n in owners}
        return cls(re.compile(_trie(sorted(owners)) or "(?!)"), keys_of, tuple(shapes))

    def candidates(self, text: str) -> frozenset[int]:
        """The rules whose pattern may match `text` (a superset of those that do)."""
        hit: set[tuple[int, int, int]] = set()
        search = self.pattern.search
        m = search(text)
        while m is not None:
            hit |= self.keys_of[m.group()]
            m = search(text, m.start() + 1)
        touched = {i for i, _, _ in hit}
        return frozenset(
            i
            for i, shape in enumerate(self.shapes)
            if shape is None
            or (i in touched and any(all((i, j, k) in hit for k in range(n)) for j, n in enumerate(shape)))
        )


def _trie(words: Sequence[str]) -> str:
    """A regex matching any of `words` (non-empty), the longest at each position, factored as a trie."""
    root: dict[str, Any] = {}
    for word in words:
        node = root
        for ch in word:
            node = node.setdefault(ch, {})
        node[""] = {}

    def emit(node: dict[str, Any]) -> str:
        alternatives = [re.escape(ch) + emit(child) for ch, child in sorted(node.items()) if ch]
        if not alternatives:
            return ""
        body = alternatives[0] if len(alternatives) == 1 else "(?:" + "|".join(alternatives) + ")"
        return f"(?:{body})?" if "" in node else body

    return emit(root)


@functools.cache
def needle_index() -> NeedleIndex:
    """The index of `RULES`, built on first use (tens of milliseconds: not at import; detectors build it)."""
    return NeedleIndex.of(RULES)


def rule_hits(text: str) -> list[I64Array]:
    """For each rule, in `RULES` order, the sorted start offsets of its matches in canonical `text` (capped)."""
    out: list[I64Array] = []
    candidates = needle_index().candidates(text)
    for i, rule in enumerate(RULES):
        starts: list[int] = []
        if i not in candidates:
            out.append(np.array(starts, dtype=np.int64))
            continue
        for m in rule.pattern.finditer(text):
            starts.append(m.start())
            if len(starts) >= MAX_HITS_PER_RULE:
                break
        out.append(np.array(starts, dtype=np.int64))
    return out


def rule_presence(text: str) -> npt.NDArray[np.float32]:
    """1.0 for each rule that matches anywhere in canonical `text`, else 0.0 (the whole-text feature vector)."""
    candidates = needle_index().candidates(text)
    return np.array(
        [1.0 if i in candidates and rule.pattern.search(text) else 0.0 for i, rule in enumerate(RULES)],
        dtype=np.float32,
    )
