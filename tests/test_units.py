import pytest

from pagewalk.units import PAGE_SIZE, format_size, parse_size


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (4096, 4096),
        ("4096", 4096),
        ("64 MiB", 64 << 20),
        ("64MiB", 64 << 20),
        ("64 mib", 64 << 20),
        ("1.5 GiB", 3 << 29),
        ("512 KiB", 512 << 10),
        ("500 kB", 500_000),
        ("64 MB", 64_000_000),
        ("1.5 GB", 1_500_000_000),
        ("100 pages", 100 * PAGE_SIZE),
        ("1 page", PAGE_SIZE),
        ("0", 0),
        (" 2 TiB ", 2 << 40),
        ("10 B", 10),
        (".5 KiB", 512),
    ],
)
def test_parse_size_accepts_documented_forms(text: object, expected: int) -> None:
    assert parse_size(text) == expected  # type: ignore[arg-type]


@pytest.mark.parametrize("bad", ["64 MiBs", "lots", "", "MiB", "1e3 MB", "64 M", "--1", None, 1.5, [1], True])
def test_parse_size_rejects_with_the_accepted_forms(bad: object) -> None:
    with pytest.raises(ValueError, match="expected an int of bytes"):
        parse_size(bad)  # type: ignore[arg-type]


def test_negative_sizes_need_permission() -> None:
    with pytest.raises(ValueError, match="negative"):
        parse_size("-1 MiB")
    assert parse_size("-1 MiB", allow_negative=True) == -(1 << 20)


@pytest.mark.parametrize(
    ("nbytes", "signed", "text"),
    [
        (0, False, "0 B"),
        (1023, False, "1023 B"),
        (1024, False, "1.0 KiB"),
        (int(71.2 * 2**20), False, "71.2 MiB"),
        (64 << 20, False, "64.0 MiB"),
        (3 << 30, False, "3.0 GiB"),
        (5 << 40, False, "5.0 TiB"),
        (int(7.2 * 2**20), True, "+7.2 MiB"),
        (-(2 << 20), True, "-2.0 MiB"),
        (-(2 << 20), False, "-2.0 MiB"),
    ],
)
def test_format_size(nbytes: int, signed: bool, text: str) -> None:
    assert format_size(nbytes, signed=signed) == text
