"""Checksums and validity rules for structured PII (cards, IBANs, national ids, IP addresses, dates).

Pure functions over digit strings: no regexes over free text here (those live in `pii_patterns`). Every rule
cites where it comes from, because a wrong rule silently turns into missed PII or false alarms.
"""

from __future__ import annotations

import ipaddress
from datetime import date

# ISO 13616 IBAN lengths per country (SWIFT IBAN registry).
IBAN_LENGTHS: dict[str, int] = {
    "AD": 24, "AE": 23, "AL": 28, "AT": 20, "AZ": 28, "BA": 20, "BE": 16, "BG": 22, "BH": 22, "BI": 27,
    "BR": 29, "BY": 28, "CH": 21, "CR": 22, "CY": 28, "CZ": 24, "DE": 22, "DJ": 27, "DK": 18, "DO": 28,
    "EE": 20, "EG": 29, "ES": 24, "FI": 18, "FK": 18, "FO": 18, "FR": 27, "GB": 22, "GE": 22, "GI": 23,
    "GL": 18, "GR": 27, "GT": 28, "HR": 21, "HU": 28, "IE": 22, "IL": 23, "IQ": 23, "IS": 26, "IT": 27,
    "JO": 30, "KW": 30, "KZ": 20, "LB": 28, "LC": 32, "LI": 21, "LT": 20, "LU": 20, "LV": 21, "LY": 25,
    "MC": 27, "MD": 24, "ME": 22, "MK": 19, "MN": 20, "MR": 27, "MT": 31, "MU": 30, "NI": 28, "NL": 18,
    "NO": 15, "OM": 23, "PK": 24, "PL": 28, "PS": 29, "PT": 25, "QA": 29, "RO": 24, "RS": 22, "RU": 33,
    "SA": 24, "SC": 31, "SD": 18, "SE": 24, "SI": 19, "SK": 24, "SM": 27, "SO": 23, "ST": 25, "SV": 28,
    "TL": 23, "TN": 24, "TR": 26, "UA": 29, "VA": 22, "VG": 24, "XK": 20, "YE": 30,
}  # fmt: skip


def luhn_ok(digits: str) -> bool:
    """The Luhn mod-10 check used by payment cards (ISO/IEC 7812-1)."""
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


def card_iin_ok(digits: str) -> bool:
    """True when the number starts with a known issuer range and has a length that issuer uses."""
    n = len(digits)
    p2, p3, p4, p6 = int(digits[:2]), int(digits[:3]), int(digits[:4]), int(digits[:6])
    if digits[0] == "4":  # Visa
        return n in (13, 16, 19)
    if 51 <= p2 <= 55 or 2221 <= p4 <= 2720:  # Mastercard
        return n == 16
    if p2 in (34, 37):  # American Express
        return n == 15
    if p4 == 6011 or p2 == 65 or 644 <= p3 <= 649 or 622126 <= p6 <= 622925:  # Discover
        return 16 <= n <= 19
    if 3528 <= p4 <= 3589:  # JCB
        return 16 <= n <= 19
    if 300 <= p3 <= 305 or p2 in (36, 38, 39) or p4 == 3095:  # Diners Club
        return 14 <= n <= 19
    if p2 == 62:  # UnionPay
        return 16 <= n <= 19
    if p2 in (50, 56, 57, 58) or p2 == 67 or p2 == 63:  # Maestro and relatives
        return 12 <= n <= 19
    if p4 in (2131, 1800):  # legacy JCB
        return n == 15
    return False


def iban_ok(compact: str) -> bool:
    """ISO 13616: known country, the country's length, and the mod-97 check equal to 1."""
    s = compact.upper()
    if IBAN_LENGTHS.get(s[:2]) != len(s) or not s[2:4].isdigit():
        return False
    rearranged = s[4:] + s[:4]
    number = "".join(str(int(ch, 36)) for ch in rearranged)
    return int(number) % 97 == 1


def ssn_ok(area: str, group: str, serial: str) -> bool:
    """US SSA rules: area not 000, 666 or 9xx; group not 00; serial not 0000; not well-known test numbers."""
    if area in ("000", "666") or area[0] == "9" or group == "00" or serial == "0000":
        return False
    # Numbers printed in advertising and repeated-digit runs are never issued.
    return (
        f"{area}{group}{serial}" not in ("078051120", "219099999", "123456789") and len(set(area + group + serial)) > 1
    )


_TFN_WEIGHTS_9 = (1, 4, 3, 7, 5, 8, 6, 9, 10)
_TFN_WEIGHTS_8 = (10, 7, 8, 4, 6, 3, 5, 1)


def tfn_ok(digits: str) -> bool:
    """Australian Tax File Number: weighted sum divisible by 11 (ATO algorithm, 8 or 9 digits)."""
    weights = _TFN_WEIGHTS_9 if len(digits) == 9 else _TFN_WEIGHTS_8 if len(digits) == 8 else None
    if weights is None or len(set(digits)) == 1:
        return False
    return sum(int(d) * w for d, w in zip(digits, weights, strict=True)) % 11 == 0


_ABN_WEIGHTS = (10, 1, 3, 5, 7, 9, 11, 13, 15, 17, 19)


def abn_ok(digits: str) -> bool:
    """Australian Business Number: subtract 1 from the first digit; weighted sum divisible by 89 (ABR)."""
    if len(digits) != 11 or digits[0] == "0":
        return False
    values = [int(d) for d in digits]
    values[0] -= 1
    return sum(v * w for v, w in zip(values, _ABN_WEIGHTS, strict=True)) % 89 == 0


_MEDICARE_WEIGHTS = (1, 3, 7, 9, 1, 3, 7, 9)


def medicare_ok(digits: str) -> bool:
    """Australian Medicare card number: first digit 2-6, weighted sum of 8 digits mod 10 is the 9th digit."""
    if len(digits) not in (10, 11) or digits[0] not in "23456":
        return False
    check = sum(int(d) * w for d, w in zip(digits[:8], _MEDICARE_WEIGHTS, strict=True)) % 10
    return check == int(digits[8])


def ip_ok(candidate: str) -> bool:
    """A syntactically valid IPv4 or IPv6 address (the stdlib parser decides); an IPv6 one needs two non-empty
    groups, so slices and scopes in code (`a[::2]`, `std::`) are not addresses."""
    try:
        address = ipaddress.ip_address(candidate)
    except ValueError:
        return False
    return address.version == 4 or sum(1 for group in candidate.split(":") if group) >= 2


def date_ok(year: int, month: int, day: int) -> bool:
    """A real calendar date between 1900 and 2100."""
    if not 1900 <= year <= 2100:
        return False
    try:
        date(year, month, day)
    except ValueError:
        return False
    return True
