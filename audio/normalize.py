"""Vietnamese text normalization: write out what a TTS engine would misread.

Commune bulletins are full of abbreviations (UBND, HĐND), numbers with Vietnamese
separators (1.500.000 đồng, 3,5 ha), dates, times, counts ("8/8 thôn") and phone numbers.
Neither gTTS nor espeak-ng reads these correctly, so every engine gets the same text with
them spelled out in words. The rules are pure functions, applied in a fixed order (see
:func:`normalize_text`); each is tested on its own.
"""

from __future__ import annotations

import functools
import re
import tomllib
import unicodedata
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from audio.exceptions import AudioError

DIGITS = ("không", "một", "hai", "ba", "bốn", "năm", "sáu", "bảy", "tám", "chín")
# A word made of letters (Vietnamese included): \w minus digits and underscore.
_LETTER = r"[^\W\d_]"

# Words that, right before "30/11" or "30-11", mean it is a date and not a count/range.
DATE_CUES = frozenset(
    {
        "ngày",
        "hôm",
        "nay",
        "mai",
        "sáng",
        "trưa",
        "chiều",
        "tối",
        "đêm",
        "từ",
        "đến",
        "tới",
        "vào",
        "trước",
        "sau",
        "hạn",
        "đợt",
        "lúc",
        "qua",
    }
)

# Words that, right after "2-3" or "8/8", make it a quantity ("2-3 ngày") even after a
# date cue ("từ 2-3 ngày").
QUANTITY_WORDS = frozenset(
    {
        "giây",
        "phút",
        "giờ",
        "ngày",
        "tuần",
        "tháng",
        "năm",
        "tuổi",
        "lần",
        "người",
        "hộ",
        "thôn",
        "xã",
        "cụm",
        "loa",
        "con",
        "cây",
        "ha",
        "km",
        "m",
        "kg",
        "tấn",
        "triệu",
        "nghìn",
        "trăm",
        "tỷ",
        "đồng",
        "em",
        "cháu",
        "học",
        "buổi",
        "đợt",
        "độ",
    }
)


# ---------------------------------------------------------------------------- numbers


def number_words(n: int) -> str:
    """Read a whole number in Vietnamese words (northern usage: nghìn, linh, tư).

    >>> number_words(1_500_000)
    'một triệu năm trăm nghìn'
    """
    if n < 0:
        return "âm " + number_words(-n)
    if n == 0:
        return "không"
    return " ".join(_words(n, full=False))


def _words(n: int, *, full: bool) -> list[str]:
    # ``full``: a higher group was already spoken, so "5" must be read "không trăm linh năm".
    if n >= 10**9:
        high, low = divmod(n, 10**9)
        out = [*_words(high, full=full), "tỷ"]
        if low:
            out += _words(low, full=True)
        return out
    out = []
    started = full
    for group, scale in ((n // 10**6, "triệu"), ((n // 1000) % 1000, "nghìn"), (n % 1000, "")):
        if group == 0:
            continue
        out += _group_words(group, full=started)
        if scale:
            out.append(scale)
        started = True
    return out


def _group_words(n: int, *, full: bool) -> list[str]:
    hundreds, rest = divmod(n, 100)
    tens, units = divmod(rest, 10)
    out: list[str] = []
    if hundreds or full:
        out += [DIGITS[hundreds], "trăm"]
    if tens == 0:
        if units:
            if out:
                out.append("linh")
            out.append(DIGITS[units])
    elif tens == 1:
        out.append("mười")
        if units == 5:
            out.append("lăm")
        elif units:
            out.append(DIGITS[units])
    else:
        out += [DIGITS[tens], "mươi"]
        out += [{1: "mốt", 4: "tư", 5: "lăm"}.get(units, DIGITS[units])] if units else []
    return out


def digits_words(digits: str) -> str:
    """Read a string of digits one by one: "114" -> "một một bốn"."""
    return " ".join(DIGITS[int(d)] for d in digits if d.isdigit())


def decimal_words(integer: str, fraction: str) -> str:
    """Read a decimal: ("3", "5") -> "ba phẩy năm", ("3", "05") -> "ba phẩy không năm".

    Short fractions without a leading zero are read as a number, as people say them
    ("hai phẩy hai mươi lăm"); others digit by digit so no zero is lost.
    """
    whole = number_words(int(integer.replace(".", "")))
    if len(fraction) <= 2 and not fraction.startswith("0"):
        return f"{whole} phẩy {number_words(int(fraction))}"
    return f"{whole} phẩy {digits_words(fraction)}"


def ordinal_words(n: int) -> str:
    """Ordinal after "thứ": 1 -> "nhất", 4 -> "tư", otherwise the number."""
    return {1: "nhất", 4: "tư"}.get(n, number_words(n))


# ---------------------------------------------------------------------------- lexicon


# eq=False: hashed by identity so compiled patterns can be cached per lexicon
# (load_lexicon returns one instance per file).
@dataclass(frozen=True, eq=False)
class Lexicon:
    abbreviations: dict[str, str]
    units: dict[str, str]


@functools.cache
def load_lexicon(extra: Path | None = None) -> Lexicon:
    """Built-in abbreviations/units, with ``extra`` (a TOML file of the same shape) on top."""
    base = resources.files("audio").joinpath("data/abbreviations.toml").read_text("utf-8")
    data = tomllib.loads(base)
    abbreviations = dict(data.get("abbreviations", {}))
    units = dict(data.get("units", {}))
    if extra is not None:
        try:
            more = tomllib.loads(Path(extra).read_text("utf-8"))
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
            raise AudioError(
                f"cannot read the extra abbreviations file {extra}: {exc}; fix or remove it"
            ) from exc
        for table, target in (("abbreviations", abbreviations), ("units", units)):
            section = more.get(table, {})
            if not isinstance(section, dict) or not all(
                isinstance(v, str) for v in section.values()
            ):
                raise AudioError(
                    f'{extra}: [{table}] must map words to strings, e.g. UBND = "Ủy ban nhân dân"'
                )
            target.update({unicodedata.normalize("NFC", k): v for k, v in section.items()})
    return Lexicon(abbreviations=abbreviations, units=units)


def _alternation(words: list[str]) -> str:
    return "|".join(re.escape(w) for w in sorted(words, key=len, reverse=True))


@functools.cache
def _abbreviation_re(lexicon: Lexicon) -> re.Pattern[str]:
    return re.compile(rf"(?<!\w)({_alternation(list(lexicon.abbreviations))})(?!\w)")


@functools.cache
def _unit_re(lexicon: Lexicon) -> re.Pattern[str]:
    # After a digit (optionally one space) or right after "/" (as in "đồng/kg").
    return re.compile(
        rf"(?:(?<=\d)\s?|(?<=/))({_alternation(list(lexicon.units))})(?!{_LETTER}|\d)"
    )


# ---------------------------------------------------------------------------- rules


def expand_abbreviations(text: str, lexicon: Lexicon | None = None) -> str:
    """UBND -> "Ủy ban nhân dân" (whole words, case-sensitive)."""
    lexicon = lexicon or load_lexicon()
    return _abbreviation_re(lexicon).sub(lambda m: lexicon.abbreviations[m.group(1)], text)


_PHONE_RE = re.compile(r"(?<![\w.,])(\+84|0)((?:[ .\-]?\d){8,10})(?![\w]|[.,]\d)")
_HOTLINE_RE = re.compile(
    r"(?<!\w)((?:gọi|số|hotline|đường dây nóng|tổng đài)\s+)(11[1-5])(?!\w)", re.IGNORECASE
)


def read_phone_numbers(text: str) -> str:
    """0912 345 678 / 0912345678 / +84 912 345 678 -> digits one by one, grouped by commas.

    Also 111-115 (emergency numbers) after "gọi", "số", "đường dây nóng"...
    """

    def phone(m: re.Match[str]) -> str:
        prefix, rest = m.group(1), m.group(2)
        digits = re.sub(r"\D", "", rest)
        total = len(digits) + (1 if prefix == "0" else 0)
        if prefix == "0" and total not in (10, 11):
            return m.group(0)
        if prefix == "+84" and len(digits) not in (9, 10):
            return m.group(0)
        if re.search(r"[ .\-]", rest.strip()):
            groups = [g for g in re.split(r"[ .\-]+", rest.strip()) if g]
            if prefix == "0":
                groups[0] = "0" + groups[0]
        else:
            full = ("0" if prefix == "0" else "") + digits
            if prefix == "+84":
                groups = [full[:3], full[3:6], full[6:]]
            else:
                groups = [full[:4], full[4:7], full[7:]]
        spoken = ", ".join(digits_words(g) for g in groups)
        return ("cộng tám bốn, " if prefix == "+84" else "") + spoken

    text = _PHONE_RE.sub(phone, text)
    return _HOTLINE_RE.sub(lambda m: m.group(1) + digits_words(m.group(2)), text)


def _valid_day_month(day: int, month: int) -> bool:
    return 1 <= day <= 31 and 1 <= month <= 12


def _previous_word(text: str, pos: int) -> str:
    match = re.search(rf"({_LETTER}+)\W*$", text[:pos])
    return match.group(1).lower() if match else ""


def _date_words(day: int, month: int, year: int | None, previous: str) -> str:
    out = "" if previous == "ngày" else "ngày "
    out += f"{number_words(day)} tháng {ordinal_month(month)}"
    if year is not None:
        out += f" năm {number_words(year)}"
    return out


def ordinal_month(month: int) -> str:
    """Month names are numbers except "tư" for April: tháng 4 -> "tháng tư"."""
    return "tư" if month == 4 else number_words(month)


_FULL_DATE_RE = re.compile(r"(?<![\d/.,-])(\d{1,2})([/.\-])(\d{1,2})\2(\d{4})(?![\d/])")
_MONTH_YEAR_RE = re.compile(r"(?<!\w)(tháng)\s+(\d{1,2})[/\-](\d{4})(?!\d)", re.IGNORECASE)


def read_dates(text: str) -> str:
    """30/11/2026, 30-11-2026, 30.11.2026 -> "ngày ba mươi tháng mười một năm ...";
    "tháng 11/2026" -> "tháng mười một năm ..."."""

    def full(m: re.Match[str]) -> str:
        day, month, year = int(m.group(1)), int(m.group(3)), int(m.group(4))
        if not _valid_day_month(day, month):
            return m.group(0)
        return _date_words(day, month, year, _previous_word(m.string, m.start()))

    text = _FULL_DATE_RE.sub(full, text)

    def month_year(m: re.Match[str]) -> str:
        month, year = int(m.group(2)), int(m.group(3))
        if not 1 <= month <= 12:
            return m.group(0)
        return f"{m.group(1)} {ordinal_month(month)} năm {number_words(year)}"

    return _MONTH_YEAR_RE.sub(month_year, text)


_TIME_H_RE = re.compile(
    rf"(?<![\w.,])(\d{{1,2}})\s?[hH](?:(\d{{2}})(?:'|p(?:h)?)?)?(?!{_LETTER}|\d)"
)
_TIME_COLON_RE = re.compile(r"(?<![\w.,:])(\d{1,2}):(\d{2})(?![\d:])")
_TIME_RANGE_RE = re.compile(r"\b(giờ|phút)\s*-\s*(?=\w)")


def read_times(text: str) -> str:
    """8h30 -> "tám giờ ba mươi phút", 17h -> "mười bảy giờ", 8:30 -> "tám giờ ba mươi phút"."""

    def spoken(hour: int, minute: int | None) -> str:
        out = f"{number_words(hour)} giờ"
        if minute:
            out += f" {number_words(minute)} phút"
        return out

    def by_h(m: re.Match[str]) -> str:
        hour = int(m.group(1))
        minute = int(m.group(2)) if m.group(2) else None
        if hour > 24 or (minute is not None and minute > 59):
            return m.group(0)
        return spoken(hour, minute)

    def by_colon(m: re.Match[str]) -> str:
        hour, minute = int(m.group(1)), int(m.group(2))
        if hour > 24 or minute > 59:
            return m.group(0)
        return spoken(hour, minute)

    text = _TIME_H_RE.sub(by_h, text)
    text = _TIME_COLON_RE.sub(by_colon, text)
    # "8h-10h" -> "tám giờ đến mười giờ"
    return _TIME_RANGE_RE.sub(r"\1 đến ", text)


_SLASH_PAIR_RE = re.compile(r"(?<![\w.,/])(\d{1,3})/(\d{1,3})(?![\d/]|[.,]\d)")
_DASH_PAIR_RE = re.compile(r"(?<![\w.,\-])(\d{1,4})\s?-\s?(\d{1,4})(?![\d\-]|[.,]\d)")
_NEXT_WORD_RE = re.compile(rf"\s*({_LETTER}+)")
_YEAR_AFTER_RE = re.compile(r"\s*năm\s+\d{4}(?!\d)")


def read_pairs(text: str) -> str:
    """Two numbers joined by "/" or "-": a date, a count or a range, from context.

    "ngày 8/8" and "30/11." are dates; "8/8 thôn" is a count ("tám trên tám thôn");
    "2-3 ngày" is a range ("hai đến ba ngày"); "sáng 30-11" is a date.
    A date cue word before (ngày, sáng, từ, đến...) makes it a date; otherwise a word
    right after makes it a count/range; otherwise a valid day/month is a date.
    """

    def pair(m: re.Match[str], joiner: str) -> str:
        a, b = int(m.group(1)), int(m.group(2))
        previous = _previous_word(m.string, m.start())
        following = _NEXT_WORD_RE.match(m.string, m.end())
        next_word = following.group(1).lower() if following else None
        if _valid_day_month(a, b):
            is_date = (
                next_word is None
                or _YEAR_AFTER_RE.match(m.string, m.end()) is not None
                or previous == "ngày"
                or (previous in DATE_CUES and next_word not in QUANTITY_WORDS)
            )
            if is_date:
                return _date_words(a, b, None, previous)
        return f"{number_words(a)} {joiner} {number_words(b)}"

    text = _SLASH_PAIR_RE.sub(lambda m: pair(m, "trên"), text)
    return _DASH_PAIR_RE.sub(lambda m: pair(m, "đến"), text)


_ORDINAL_RE = re.compile(r"(?<!\w)(thứ)\s+(\d{1,3})(?!\d|[.,]\d)", re.IGNORECASE)


def read_ordinals(text: str) -> str:
    """ "thứ 2" -> "thứ hai", "thứ 4" -> "thứ tư", "lần thứ 1" -> "lần thứ nhất"."""
    return _ORDINAL_RE.sub(lambda m: f"{m.group(1)} {ordinal_words(int(m.group(2)))}", text)


_NEGATIVE_RE = re.compile(r"(?<![\w\d])-(?=\d[\d,]*\s?(?:°|º|℃))")


def expand_units(text: str, lexicon: Lexicon | None = None) -> str:
    """Units after numbers: "5km" -> "5 ki lô mét", "35°C" -> "35 độ xê",
    "50%" -> "50 phần trăm", "-5°C" -> "âm 5 độ xê"; "đồng/kg" -> "đồng/ki lô gam"."""
    lexicon = lexicon or load_lexicon()
    text = _NEGATIVE_RE.sub("âm ", text)

    def unit(m: re.Match[str]) -> str:
        after_slash = m.start() > 0 and m.string[m.start() - 1] == "/"
        return ("" if after_slash else " ") + lexicon.units[m.group(1)]

    return _unit_re(lexicon).sub(unit, text)


_NUMBER_RE = re.compile(r"(?<![\w])(\d{1,3}(?:\.\d{3})+|\d+)(?:([,.])(\d+))?(?!\w)")


def read_numbers(text: str) -> str:
    """Numbers to words: 1.500.000 (dots group thousands), 3,5 (comma is the decimal
    mark), 25 -> "hai mươi lăm". Leading-zero codes of 3+ digits are read digit by digit."""

    def number(m: re.Match[str]) -> str:
        whole, mark, fraction = m.group(1), m.group(2), m.group(3)
        if mark == "," and fraction is not None:
            return decimal_words(whole, fraction)
        if mark == "." and fraction is not None:
            # "1.500" was taken as thousands above; "3.5" (English-style) is a decimal.
            if "." not in whole and len(fraction) != 3:
                return decimal_words(whole, fraction)
            return f"{_whole(whole)} chấm {_whole(fraction)}"
        return _whole(whole)

    return _NUMBER_RE.sub(number, text)


def _whole(digits: str) -> str:
    if digits.startswith("0") and len(digits) >= 3:
        return digits_words(digits)
    return number_words(int(digits.replace(".", "")))


_BULLET_RE = re.compile(r"^\s*(?:[-*•+–—]|\d+[.)])\s+", re.MULTILINE)
_QUOTES_RE = re.compile(r"[\"“”«»„‘’`*_#]")
_BRACKETS_RE = re.compile(r"[ \t]*[()\[\]{}][ \t]*")
_WORD_SLASH_RE = re.compile(rf"(?<={_LETTER})\s?/\s?(?={_LETTER})")
_SENTENCE_END = ".!?;:…"


def clean_layout(text: str) -> str:
    """Unicode NFC, bullets and quotes removed, one sentence-ending mark per line so
    engines pause at line ends, runs of spaces collapsed."""
    text = unicodedata.normalize("NFC", text).replace("\r\n", "\n").replace("\r", "\n")
    text = _BULLET_RE.sub("", text)
    text = _QUOTES_RE.sub("", text)
    text = _BRACKETS_RE.sub(", ", text)
    text = text.replace("...", "…")
    lines = []
    for raw in text.split("\n"):
        line = re.sub(r"\s+", " ", raw).strip(" ,")
        if not line:
            continue
        if line[-1] not in _SENTENCE_END:
            line += "."
        lines.append(line)
    return "\n".join(lines)


def normalize_text(text: str, *, extra_abbreviations: Path | None = None) -> str:
    """Return ``text`` as it should be spoken: every rule of this module, in order.

    Abbreviations, then phone numbers, dates, times, number pairs (dates, counts,
    ranges), ordinals, units, and finally the remaining numbers. ``extra_abbreviations``
    is a site TOML file merged over ``audio/data/abbreviations.toml``.
    """
    lexicon = load_lexicon(Path(extra_abbreviations) if extra_abbreviations else None)
    text = clean_layout(text)
    text = expand_abbreviations(text, lexicon)
    text = read_phone_numbers(text)
    text = read_dates(text)
    text = read_times(text)
    text = read_pairs(text)
    text = read_ordinals(text)
    text = expand_units(text, lexicon)
    text = read_numbers(text)
    text = _WORD_SLASH_RE.sub(" trên ", text)
    text = re.sub(r"[ \t]+", " ", text)
    text = re.sub(r" ([,.!?;:…])", r"\1", text)
    return "\n".join(line.strip() for line in text.split("\n") if line.strip())


_SPLIT_RE = re.compile(r"(?<=[.!?;:…])\s+|\n+")


def split_sentences(text: str) -> list[str]:
    """Split normalized text at Vietnamese sentence punctuation (. ! ? ; : …) and line
    breaks, keeping the punctuation, so each piece ends where a pause belongs."""
    return [s.strip() for s in _SPLIT_RE.split(text) if s.strip(" .,!?;:…\n")]
