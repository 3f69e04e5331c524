"""IIN validation as the Kazakh standard defines it."""

from __future__ import annotations

from datetime import date

import pytest

from qamqor.core.i18n import gettext
from qamqor.registry import IIN, InvalidIINError, Sex, is_valid_iin, make_iin
from qamqor.registry.iin import check_digit


def test_a_valid_iin_gives_birth_date_and_sex() -> None:
    iin = IIN.parse("860904350504")
    assert iin.birth_date == date(1986, 9, 4)
    assert iin.sex is Sex.MALE
    assert IIN.parse(" 860904 350504 ").value == "860904350504"


def test_first_pass_check_digit_by_hand() -> None:
    # 8*1+6*2+0*3+9*4+0*5+4*6+3*7+5*8+0*9+5*10+0*11 = 191; 191 mod 11 = 4
    assert check_digit("86090435050") == 4


def test_second_pass_when_the_first_gives_ten() -> None:
    # Find a number whose first pass is 10: the second pass (weights 3..11,1,2) decides.
    for serial in range(10000):
        head = f"7501024{serial:04d}"
        digits = [int(c) for c in head]
        if sum(d * w for d, w in zip(digits, range(1, 12), strict=True)) % 11 == 10:
            second = (
                sum(d * w for d, w in zip(digits, (3, 4, 5, 6, 7, 8, 9, 10, 11, 1, 2), strict=True))
                % 11
            )
            assert check_digit(head) == (None if second == 10 else second)
            if second != 10:
                assert is_valid_iin(head + str(second))
            break
    else:
        pytest.fail("no serial with a first-pass remainder of 10")


def test_no_valid_iin_when_both_passes_give_ten() -> None:
    heads = [f"7501024{s:04d}" for s in range(10000)]
    never = [h for h in heads if check_digit(h) is None]
    assert never, "some serials must be unusable"
    assert make_iin(date(1975, 1, 2), Sex.FEMALE, int(never[0][7:])) is None


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("86090435050", "An IIN has exactly 12 digits."),
        ("8609043505041", "An IIN has exactly 12 digits."),
        ("86090435050a", "An IIN has exactly 12 digits."),
        ("860904750504", "The 7th digit of an IIN (century and sex) must be 1 to 6."),
        ("860230350504", "The first 6 digits of an IIN are not a valid date of birth."),
        ("860904350505", "The IIN's check digit is wrong: please check the number for a typo."),
    ],
)
def test_bad_iins_say_why(value: str, reason: str) -> None:
    with pytest.raises(InvalidIINError) as caught:
        IIN.parse(value)
    assert caught.value.message == reason
    # The reason is shown to residents in their language.
    assert gettext("kk", reason) != reason
    assert gettext("ru", reason) != reason


@pytest.mark.parametrize(
    ("born", "sex", "digit"),
    [
        (date(1899, 12, 31), Sex.MALE, "1"),
        (date(1899, 12, 31), Sex.FEMALE, "2"),
        (date(1950, 6, 1), Sex.MALE, "3"),
        (date(1950, 6, 1), Sex.FEMALE, "4"),
        (date(2004, 2, 29), Sex.MALE, "5"),
        (date(2004, 2, 29), Sex.FEMALE, "6"),
    ],
)
def test_century_and_sex_digit_round_trip(born: date, sex: Sex, digit: str) -> None:
    value = next(v for s in range(20) if (v := make_iin(born, sex, s)))
    assert value[6] == digit
    parsed = IIN.parse(value)
    assert (parsed.birth_date, parsed.sex) == (born, sex)
