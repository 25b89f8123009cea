"""Checksum validators: known-good values pass, one-digit changes fail."""

from __future__ import annotations

import pytest

from extproc.detect import checksums


@pytest.mark.parametrize(
    ("name", "valid", "invalid"),
    [
        ("luhn", "4111 1111 1111 1111", "4111 1111 1111 1112"),
        ("luhn", "378282246310005", "378282246310006"),
        ("iban", "DE89 3704 0044 0532 0130 00", "DE89 3704 0044 0532 0130 01"),
        ("iban", "GB82WEST12345698765432", "GB82WEST12345698765433"),
        ("iban", "NL91ABNA0417164300", "NL91ABNA041716430"),  # right checksum family, wrong length
        ("nhs", "943 476 5919", "943 476 5918"),
        ("sin", "046-454-286", "046-454-287"),
        ("tfn", "123 456 782", "123 456 789"),
        ("ssn", "456-78-9012", "666-12-3456"),
        ("ssn", "123-45-6789", "123-00-6789"),
        ("ssn", "219-09-9999", "900-12-3456"),
        ("nino", "AB 12 34 56 C", "GB 12 34 56 C"),
        ("e164", "+44 20 7946 0958", "+44 12"),
        ("has_digit", "C01X00T2Z", "CFGHJKLMN"),
        ("passport_nl", "NX1A2B3C4", "AB1234567"),
    ],
)
def test_validator_accepts_valid_and_rejects_invalid(name: str, valid: str, invalid: str) -> None:
    validator = checksums.VALIDATORS[name]
    assert validator(valid)
    assert not validator(invalid)


def test_ssn_rejects_zero_serial_and_zero_area() -> None:
    assert not checksums.ssn("000-12-3456")
    assert not checksums.ssn("123-45-0000")


def test_iban_rejects_unknown_country() -> None:
    assert not checksums.iban("QQ89 3704 0044 0532 0130 00")


def test_nhs_rejects_prefixes_whose_check_digit_would_be_ten() -> None:
    # Weighted sum of 000000006 is 12, 12 % 11 == 1, so the check digit would be 10: never issued.
    assert not any(checksums.nhs("000000006" + last) for last in "0123456789")
    assert not checksums.nhs("12345")
