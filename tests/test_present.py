"""The shared presentation helpers: one placeholder for unknown sizes, plurals, tables, tails, verdicts."""

from pagewalk._present import UNKNOWN, amount, plural, size_cell, table, tail, verdict_text


def test_size_cell_has_one_placeholder_for_unknown() -> None:
    assert size_cell(None) == UNKNOWN
    assert size_cell(None, signed=True) == UNKNOWN
    assert size_cell(3 << 20) == "3.0 MiB"
    assert size_cell(1 << 20, signed=True) == "+1.0 MiB"


def test_plural_and_amount() -> None:
    assert [plural(n, "page") for n in (0, 1, 2, -1)] == ["0 pages", "1 page", "2 pages", "-1 page"]
    assert amount(1, "pages") == "1 page"
    assert amount(5, "pages", signed=True) == "+5 pages"
    assert amount(2048, "bytes") == "2.0 KiB"


def test_table_aligns_columns_and_leaves_the_last_unpadded() -> None:
    lines = table(("name", "size", "note"), [("a", "1.0 KiB", "x"), ("longer", "12.0 MiB", "")], right={1}, indent="  ")
    assert lines == [
        "  name        size  note",
        "  a        1.0 KiB  x",
        "  longer  12.0 MiB",
    ]


def test_tail_keeps_the_last_lines_indented() -> None:
    assert tail("one\ntwo\nthree\n", 2) == "    two\n    three"
    assert tail("", 5) == "    (empty)"


def test_verdict_text() -> None:
    assert verdict_text("uss_growth", 1 << 20, 8 << 20, True, "bytes", "marker") == (
        "pass  uss_growth 1.0 MiB <= 8.0 MiB (marker)"
    )
    assert verdict_text("flags_gained:KSM", 3, 0, False, "pages", "default") == (
        "FAIL  flags_gained:KSM 3 pages > 0 pages (default)"
    )
