"""Vietnamese text normalization: each rule on its own, then the whole pipeline."""

from __future__ import annotations

from pathlib import Path

import pytest

from audio.exceptions import AudioError
from audio.normalize import (
    clean_layout,
    decimal_words,
    expand_abbreviations,
    expand_units,
    load_lexicon,
    normalize_text,
    number_words,
    ordinal_words,
    read_dates,
    read_numbers,
    read_ordinals,
    read_pairs,
    read_phone_numbers,
    read_times,
    split_sentences,
)


@pytest.mark.parametrize(
    ("n", "words"),
    [
        (0, "không"),
        (1, "một"),
        (4, "bốn"),
        (5, "năm"),
        (10, "mười"),
        (11, "mười một"),  # "một" after mười, "mốt" only after mươi
        (14, "mười bốn"),
        (15, "mười lăm"),  # "lăm" after mười
        (20, "hai mươi"),
        (21, "hai mươi mốt"),
        (24, "hai mươi tư"),
        (25, "hai mươi lăm"),  # "lăm" after mươi
        (55, "năm mươi lăm"),
        (91, "chín mươi mốt"),
        (100, "một trăm"),
        (101, "một trăm linh một"),  # "linh" for an empty tens place
        (105, "một trăm linh năm"),
        (110, "một trăm mười"),
        (115, "một trăm mười lăm"),
        (121, "một trăm hai mươi mốt"),
        (1000, "một nghìn"),
        (1005, "một nghìn không trăm linh năm"),
        (1050, "một nghìn không trăm năm mươi"),
        (2026, "hai nghìn không trăm hai mươi sáu"),
        (10_000, "mười nghìn"),
        (15_000, "mười lăm nghìn"),
        (1_500_000, "một triệu năm trăm nghìn"),
        (1_000_005, "một triệu không trăm linh năm"),
        (2_000_000_000, "hai tỷ"),
        (1_000_000_001, "một tỷ không trăm linh một"),
        (-5, "âm năm"),
    ],
)
def test_number_words(n: int, words: str) -> None:
    assert number_words(n) == words


@pytest.mark.parametrize(
    ("integer", "fraction", "words"),
    [
        ("3", "5", "ba phẩy năm"),
        ("0", "25", "không phẩy hai mươi lăm"),
        ("3", "05", "ba phẩy không năm"),
        ("1", "125", "một phẩy một hai năm"),
        ("1.234", "5", "một nghìn hai trăm ba mươi tư phẩy năm"),
    ],
)
def test_decimal_words(integer: str, fraction: str, words: str) -> None:
    assert decimal_words(integer, fraction) == words


@pytest.mark.parametrize(
    ("text", "spoken"),
    [
        ("3,5 ha", "ba phẩy năm ha"),
        ("1.500.000 đồng", "một triệu năm trăm nghìn đồng"),
        ("1.500 hộ", "một nghìn năm trăm hộ"),
        ("1.234,5", "một nghìn hai trăm ba mươi tư phẩy năm"),
        ("3.5", "ba phẩy năm"),
        ("có 25 người", "có hai mươi lăm người"),
        ("mã 007", "mã không không bảy"),
        ("tổ 05", "tổ năm"),
        ("thôn 1, 2, 3", "thôn một, hai, ba"),
    ],
)
def test_read_numbers(text: str, spoken: str) -> None:
    assert read_numbers(text) == spoken


def test_percent_and_decimal_percent() -> None:
    assert normalize_text("tăng 50%") == "tăng năm mươi phần trăm."
    assert normalize_text("đạt 3,5 %") == "đạt ba phẩy năm phần trăm."
    assert normalize_text("đạt 99,9%.") == "đạt chín mươi chín phẩy chín phần trăm."


@pytest.mark.parametrize(
    ("text", "spoken"),
    [
        ("UBND xã", "Ủy ban nhân dân xã"),
        ("HĐND và MTTQ", "Hội đồng nhân dân và Mặt trận Tổ quốc"),
        ("CĐS, TTHC", "chuyển đổi số, thủ tục hành chính"),
        ("HTX nông nghiệp", "hợp tác xã nông nghiệp"),
        ("BHYT, BHXH", "bảo hiểm y tế, bảo hiểm xã hội"),
        ("trường THCS và THPT", "trường trung học cơ sở và trung học phổ thông"),
        ("công tác PCCC&CNCH", "công tác phòng cháy chữa cháy và cứu nạn cứu hộ"),
        ("phát triển KT-XH", "phát triển kinh tế - xã hội"),
        # Whole words only, and case matters: "ubnd" in a word or lower case stays.
        ("UBNDX", "UBNDX"),
        ("ubnd", "ubnd"),
    ],
)
def test_expand_abbreviations(text: str, spoken: str) -> None:
    assert expand_abbreviations(text) == spoken


def test_site_abbreviations_extend_and_override(tmp_path: Path) -> None:
    extra = tmp_path / "site.toml"
    extra.write_text(
        '[abbreviations]\n"LB" = "Lục Bình"\n"HTX" = "hợp tác xã kiểu mới"\n'
        '[units]\n"sào" = "sào Bắc Bộ"\n',
        "utf-8",
    )
    spoken = normalize_text("Xã LB có 3 HTX, 5 sào", extra_abbreviations=extra)
    assert spoken == "Xã Lục Bình có ba hợp tác xã kiểu mới, năm sào Bắc Bộ."
    # The built-in list still applies.
    assert normalize_text("UBND", extra_abbreviations=extra) == "Ủy ban nhân dân."


def test_broken_site_abbreviations_file_is_refused(tmp_path: Path) -> None:
    extra = tmp_path / "bad.toml"
    extra.write_text("[abbreviations]\nLB = 3\n", "utf-8")
    with pytest.raises(AudioError, match="must map words to strings"):
        load_lexicon(extra)
    extra2 = tmp_path / "bad2.toml"
    extra2.write_text("not toml at all [", "utf-8")
    with pytest.raises(AudioError, match="cannot read the extra abbreviations"):
        load_lexicon(extra2)


@pytest.mark.parametrize(
    ("text", "spoken"),
    [
        ("ngày 30/11/2026", "ngày ba mươi tháng mười một năm hai nghìn không trăm hai mươi sáu"),
        ("hạn 30-11-2026", "hạn ngày ba mươi tháng mười một năm hai nghìn không trăm hai mươi sáu"),
        ("1/4/2025", "ngày một tháng tư năm hai nghìn không trăm hai mươi lăm"),
        ("tháng 11/2026", "tháng mười một năm hai nghìn không trăm hai mươi sáu"),
        ("32/13/2026", "32/13/2026"),  # not a date: left for the number rules
    ],
)
def test_read_dates(text: str, spoken: str) -> None:
    assert read_dates(text) == spoken


@pytest.mark.parametrize(
    ("text", "spoken"),
    [
        ("họp lúc 8h30", "họp lúc tám giờ ba mươi phút"),
        ("lúc 17h", "lúc mười bảy giờ"),
        ("lúc 7h05", "lúc bảy giờ năm phút"),
        ("lúc 8:30", "lúc tám giờ ba mươi phút"),
        ("từ 8h-10h30", "từ tám giờ đến mười giờ ba mươi phút"),
        ("5ha", "5ha"),  # hectares, not hours
        ("25h", "25h"),  # no such hour
    ],
)
def test_read_times(text: str, spoken: str) -> None:
    assert read_times(text) == spoken


def test_hours_written_out_become_words() -> None:
    assert normalize_text("lúc 17 giờ 30") == "lúc mười bảy giờ ba mươi."


@pytest.mark.parametrize(
    ("text", "spoken"),
    [
        ("đạt 8/8 thôn", "đạt tám trên tám thôn"),
        ("8/8 thôn", "tám trên tám thôn"),
        ("ngày 8/8 thôn Đông họp", "ngày tám tháng tám thôn Đông họp"),
        ("sáng 30/11 họp", "sáng ngày ba mươi tháng mười một họp"),
        ("hạn chót 30/11.", "hạn chót ngày ba mươi tháng mười một."),
        ("sáng 30-11", "sáng ngày ba mươi tháng mười một"),
        ("từ 2-3 ngày", "từ hai đến ba ngày"),
        ("5-10 km", "năm đến mười km"),
        ("45/50 hộ", "bốn mươi lăm trên năm mươi hộ"),
    ],
)
def test_read_pairs(text: str, spoken: str) -> None:
    assert read_pairs(text) == spoken


@pytest.mark.parametrize(
    ("text", "spoken"),
    [
        ("thứ 2", "thứ hai"),
        ("Thứ 4", "Thứ tư"),
        ("thứ 7", "thứ bảy"),
        ("lần thứ 1", "lần thứ nhất"),
        ("lần thứ 14", "lần thứ mười bốn"),
    ],
)
def test_read_ordinals(text: str, spoken: str) -> None:
    assert read_ordinals(text) == spoken


def test_ordinal_words() -> None:
    assert [ordinal_words(n) for n in (1, 2, 3, 4, 5)] == ["nhất", "hai", "ba", "tư", "năm"]


@pytest.mark.parametrize(
    ("text", "spoken"),
    [
        ("gọi 0912 345 678", "gọi không chín một hai, ba bốn năm, sáu bảy tám"),
        ("gọi 0912345678", "gọi không chín một hai, ba bốn năm, sáu bảy tám"),
        ("số 0912.345.678", "số không chín một hai, ba bốn năm, sáu bảy tám"),
        ("máy bàn 02093 123 456", "máy bàn không hai không chín ba, một hai ba, bốn năm sáu"),
        ("+84 912 345 678", "cộng tám bốn, chín một hai, ba bốn năm, sáu bảy tám"),
        ("gọi 114 khi có cháy", "gọi một một bốn khi có cháy"),
        ("có 114 hộ", "có 114 hộ"),  # a count, not the fire hotline
        ("1.500.000", "1.500.000"),  # not a phone number
    ],
)
def test_read_phone_numbers(text: str, spoken: str) -> None:
    assert read_phone_numbers(text) == spoken


@pytest.mark.parametrize(
    ("text", "spoken"),
    [
        ("5km", "5 ki lô mét"),
        ("5 km", "5 ki lô mét"),
        ("12 ha", "12 héc ta"),
        ("3 m³", "3 mét khối"),
        ("3 m3", "3 mét khối"),
        ("30m2", "30 mét vuông"),
        ("20 kg", "20 ki lô gam"),
        ("35°C", "35 độ xê"),
        ("-5°C", "âm 5 độ xê"),
        ("120mm", "120 mi li mét"),
        ("đồng/kg", "đồng/ki lô gam"),
        ("5 mẫu", "5 mẫu"),  # "m" only as a whole unit
        ("km", "km"),  # units only after a number
    ],
)
def test_expand_units(text: str, spoken: str) -> None:
    assert expand_units(text) == spoken


def test_clean_layout() -> None:
    raw = "  THÔNG BÁO\r\n- Mục “một”\n\n* Mục (hai)\n1. Mục ba..."
    assert clean_layout(raw) == "THÔNG BÁO.\nMục một.\nMục, hai.\nMục ba…"


def test_nfd_input_is_composed_before_matching() -> None:
    import unicodedata

    decomposed = unicodedata.normalize("NFD", "HĐND xã họp")
    assert normalize_text(decomposed) == "Hội đồng nhân dân xã họp."


def test_full_bulletin() -> None:
    text = (
        "UBND xã Lục Bình thông báo: ngày 30/11/2026, lúc 8h30, tại hội trường thôn Đông "
        "tổ chức họp dân về CĐS. Đến nay 8/8 thôn đã hoàn thành, đạt 100%. "
        "Mức hỗ trợ 1.500.000 đồng/hộ, diện tích 3,5 ha. Liên hệ 0912 345 678."
    )
    assert normalize_text(text) == (
        "Ủy ban nhân dân xã Lục Bình thông báo: ngày ba mươi tháng mười một năm hai nghìn "
        "không trăm hai mươi sáu, lúc tám giờ ba mươi phút, tại hội trường thôn Đông tổ "
        "chức họp dân về chuyển đổi số. Đến nay tám trên tám thôn đã hoàn thành, đạt một "
        "trăm phần trăm. Mức hỗ trợ một triệu năm trăm nghìn đồng trên hộ, diện tích ba "
        "phẩy năm héc ta. Liên hệ không chín một hai, ba bốn năm, sáu bảy tám."
    )


def test_no_digits_survive_in_a_typical_bulletin() -> None:
    text = (
        "Thứ 2 ngày 1/12, từ 7h đến 11h, TYT xã tiêm vắc xin cho trẻ 2-5 tuổi tại 4 điểm. "
        "Nhiệt độ 12°C, mưa 35mm. Gọi 115 hoặc 0987654321."
    )
    spoken = normalize_text(text)
    assert not any(ch.isdigit() for ch in spoken), spoken


def test_empty_text_stays_empty() -> None:
    assert normalize_text("  \n - \n") == ""


def test_split_sentences_at_vietnamese_punctuation() -> None:
    spoken = "Xin chào bà con. Hôm nay: họp dân! Ai vắng? Báo lại; cảm ơn…\nHết"
    assert split_sentences(spoken) == [
        "Xin chào bà con.",
        "Hôm nay:",
        "họp dân!",
        "Ai vắng?",
        "Báo lại;",
        "cảm ơn…",
        "Hết",
    ]
