"""The individual identification number (IIN, ЖСН / ИИН) of the Republic of Kazakhstan.

Twelve digits (Law "On national registers of identification numbers", 2007, and the rules of
their formation):

- digits 1-6: the date of birth, ``YYMMDD``;
- digit 7: century of birth and sex: 1 male / 2 female born in the 19th century (1800-1899),
  3 / 4 in the 20th (1900-1999), 5 / 6 in the 21st (2000-2099);
- digits 8-11: a serial number of registration;
- digit 12: a check digit. The weighted sum of digits 1-11 with weights 1..11 is taken modulo 11;
  when the remainder is 10 the sum is taken again with weights 3, 4, ..., 11, 1, 2. A remainder
  of 10 in the second pass means the number is never issued. Otherwise the remainder is the
  check digit.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date

from qamqor.core.i18n import N_
from qamqor.registry.enums import Sex
from qamqor.registry.errors import InvalidIINError

FIRST_WEIGHTS = tuple(range(1, 12))
SECOND_WEIGHTS = (3, 4, 5, 6, 7, 8, 9, 10, 11, 1, 2)
#: The 7th digit: (century start, sex).
CENTURY_SEX = {
    1: (1800, Sex.MALE),
    2: (1800, Sex.FEMALE),
    3: (1900, Sex.MALE),
    4: (1900, Sex.FEMALE),
    5: (2000, Sex.MALE),
    6: (2000, Sex.FEMALE),
}


def check_digit(first_eleven: str) -> int | None:
    """The check digit for the first 11 digits, or ``None`` when no valid IIN starts so."""
    digits = [int(ch) for ch in first_eleven]
    remainder = sum(d * w for d, w in zip(digits, FIRST_WEIGHTS, strict=True)) % 11
    if remainder == 10:
        remainder = sum(d * w for d, w in zip(digits, SECOND_WEIGHTS, strict=True)) % 11
        if remainder == 10:
            return None
    return remainder


@dataclass(frozen=True)
class IIN:
    """A valid IIN; constructing one from a bad string raises ``InvalidIINError``."""

    value: str
    birth_date: date
    sex: Sex

    @classmethod
    def parse(cls, text: str) -> IIN:
        value = (text or "").strip().replace(" ", "")
        if len(value) != 12 or not value.isascii() or not value.isdigit():
            raise InvalidIINError(N_("An IIN has exactly 12 digits."))
        code = int(value[6])
        if code not in CENTURY_SEX:
            raise InvalidIINError(N_("The 7th digit of an IIN (century and sex) must be 1 to 6."))
        century, sex = CENTURY_SEX[code]
        try:
            born = date(century + int(value[0:2]), int(value[2:4]), int(value[4:6]))
        except ValueError:
            raise InvalidIINError(
                N_("The first 6 digits of an IIN are not a valid date of birth.")
            ) from None
        expected = check_digit(value[:11])
        if expected is None or expected != int(value[11]):
            raise InvalidIINError(
                N_("The IIN's check digit is wrong: please check the number for a typo.")
            )
        return cls(value=value, birth_date=born, sex=sex)


def validate_iin(text: str) -> str:
    """``text`` as a valid IIN string (spaces removed), or ``InvalidIINError``."""
    return IIN.parse(text).value


def is_valid_iin(text: str) -> bool:
    try:
        IIN.parse(text)
    except InvalidIINError:
        return False
    return True


def make_iin(birth_date: date, sex: Sex, serial: int) -> str | None:
    """The IIN for a birth date, sex and 4-digit serial, or ``None`` if that serial gives no
    valid number (the check digit would be 10). Used by the demo-data generator and tests."""
    century = birth_date.year // 100 * 100
    code = next((c for c, (start, s) in CENTURY_SEX.items() if start == century and s is sex), None)
    if code is None:
        raise ValueError("birth year out of the IIN's range (1800-2099)")
    head = f"{birth_date:%y%m%d}{code}{serial % 10000:04d}"
    check = check_digit(head)
    return None if check is None else f"{head}{check}"
