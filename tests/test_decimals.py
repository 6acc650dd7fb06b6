from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from feed.decimals import BadDecimal, canonical


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("61737.63000000", "61737.63"),
        ("0.00000000", "0"),
        ("0", "0"),
        ("000", "0"),
        ("5", "5"),
        ("5.0", "5"),
        ("007.50", "7.5"),
        (".5", "0.5"),
        ("0.001", "0.001"),
        ("1e-3", "0.001"),
        ("1E+3", "1000"),
        ("60123.5", "60123.5"),
        ("-0", "0"),
        ("0.0000001", "0.0000001"),
        ("1e99", "1" + "0" * 99),
        ("1.0e-100", "0." + "0" * 99 + "1"),
        ("1e-100", "0." + "0" * 99 + "1"),
        ("0e999999999", "0"),
        ("0e-999999", "0"),
    ],
)
def test_canonical_spelling(text: str, expected: str) -> None:
    assert canonical(text) == expected


@pytest.mark.parametrize("text", ["", "abc", "-1", "-0.5", "NaN", "inf", "1.2.3", "1,5",
                                  " 1", "1_000", "\u0661", "1\n", "1e999999999",
                                  "1e999999999999999", "1e-101", "1.0e-101", "5E+100",
                                  "50E+99"])
def test_refuses_what_is_not_a_non_negative_decimal(text: str) -> None:
    with pytest.raises(BadDecimal):
        canonical(text)


@given(st.decimals(min_value=0, max_value=10**12, allow_nan=False, allow_infinity=False,
                   places=8))
def test_same_value_same_spelling(value: Decimal) -> None:
    spelled = canonical(format(value, "f"))
    assert Decimal(spelled) == value
    assert canonical(format(value, "e")) == spelled
    assert canonical(spelled) == spelled
    assert "e" not in spelled.lower() and not spelled.endswith(".")
    if "." in spelled:
        assert not spelled.endswith("0")
