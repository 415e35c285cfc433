"""Which code page the names of one archive are in, when the UTF-8 flag does not say.

The zip spec says cp437 when bit 11 (0x800) is clear, but tools write their system's code page
(Shift-JIS, GBK, cp866, ...) or UTF-8 without the flag. The encoding is chosen once per archive
over all its non-ASCII names without the flag: valid UTF-8 is UTF-8; otherwise charset-normalizer's
guesses compete with cp437 on how plausible the decoded names look (letters of one script per
word, no stray symbols), cp437 winning ties. charset-normalizer alone calls short cp437 names
cp866 or cp1250, hence the contest rather than its first answer. Decoding never fails: a name the
chosen code page cannot decode is decoded as cp437.
"""

from __future__ import annotations

import logging
import unicodedata

log = logging.getLogger(__name__)

FALLBACK = "cp437"
_SAMPLE_MAX = 64 * 1024  # names looked at by the detector: enough for a verdict, bounded time


def choose_encoding(raw_names: list[bytes]) -> str:
    """The code page of ``raw_names`` (names written without the UTF-8 flag)."""
    informative = [n for n in raw_names if not n.isascii()]
    if not informative:
        return FALLBACK
    try:
        for name in informative:
            name.decode("utf-8")
        return "utf-8"
    except UnicodeDecodeError:
        pass
    sample = bytearray()
    for name in informative:
        if len(sample) + len(name) > _SAMPLE_MAX:
            break
        sample += name + b"\n"
    candidates = [FALLBACK, *_guesses(bytes(sample))]
    best, best_cost = FALLBACK, _cost(bytes(sample), FALLBACK)
    for encoding in candidates[1:]:
        cost = _cost(bytes(sample), encoding)
        if cost < best_cost:
            best, best_cost = encoding, cost
    return best


def decode(raw: bytes, encoding: str) -> str:
    try:
        return raw.decode(encoding)
    except (UnicodeDecodeError, LookupError):
        return raw.decode(FALLBACK)


def _guesses(sample: bytes) -> list[str]:
    try:
        from charset_normalizer import from_bytes
        match = from_bytes(sample).best()
    except Exception as exc:  # a detector bug must not make an archive unreadable
        log.warning("charset detection failed (%s): names decoded as %s", exc, FALLBACK)
        return []
    if match is None:
        return []
    return list(dict.fromkeys([match.encoding, *match.could_be_from_charset]))


def _cost(sample: bytes, encoding: str) -> float:
    """How implausible ``sample`` decoded as ``encoding`` looks as file names (inf: undecodable).

    Counts non-ASCII characters that are neither letters, marks nor digits (box drawing, math
    and currency signs are what a wrong code page produces), and letters whose script differs
    from the previous letter's inside one word (``cafВ``).
    """
    try:
        text = sample.decode(encoding)
    except (UnicodeDecodeError, LookupError):
        return float("inf")
    cost = 0
    previous = ""
    for ch in text:
        if ch.isascii():
            script = "latin" if ch.isalpha() else ""
        else:
            category = unicodedata.category(ch)
            if category[0] not in "LMN":
                cost += 1
                previous = ""
                continue
            script = _script(ch)
        if script and previous and script != previous:
            cost += 1
        previous = script
    return cost


def _script(ch: str) -> str:
    """A coarse script of a letter: the first word of its Unicode name (LATIN, CYRILLIC, CJK...)."""
    name = unicodedata.name(ch, "")
    first = name.split(" ", 1)[0]
    if first in ("HIRAGANA", "KATAKANA", "CJK", "HALFWIDTH", "FULLWIDTH", "IDEOGRAPHIC"):
        return "cjk"
    return first.lower()
