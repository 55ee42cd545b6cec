"""Addresses: validation, the normalised key, names safe for a header, the suppression hash."""

from __future__ import annotations

import hashlib
import unicodedata

import pytest
from email_validator import EmailNotValidError, validate_email
from hypothesis import given, settings
from hypothesis import strategies as st

from subscribers.addresses import clean_name, normalize_email, parse_address, suppression_hash
from subscribers.errors import InvalidEmail


def test_domain_is_lower_cased_and_idna_encoded_and_local_part_folded() -> None:
    address = parse_address("  Ann.Lee@Exämple.COM ")
    assert address.email == "Ann.Lee@exämple.com"  # what mail is sent to: as typed, domain tidied
    assert address.normalized == "ann.lee@xn--exmple-cua.com"


def test_two_spellings_of_one_mailbox_share_a_key() -> None:
    assert normalize_email("ANN@EXAMPLE.ORG") == normalize_email("ann@example.org")
    assert normalize_email("ann@exämple.com") == normalize_email("ANN@EXÄMPLE.COM")


@pytest.mark.parametrize(
    "raw",
    [
        "",
        "   ",
        "no-at-sign",
        "a@b",
        "two@@example.com",
        "a b@example.com",
        ".dot@example.com",
        "dot.@example.com",
        "do..t@example.com",
        "x@localhost",
        "x@example..com",
        "a@example.com\r\nBcc: victim@example.org",
        "a@" + "b" * 250 + ".com",
    ],
)
def test_invalid_addresses_are_refused_with_a_reason(raw: str) -> None:
    with pytest.raises(InvalidEmail) as info:
        parse_address(raw)
    assert str(info.value)  # says why


def test_a_local_part_beyond_ascii_is_refused_as_this_sender_cannot_mail_it() -> None:
    # Mailing it needs SMTPUTF8, which the sender does not use: the address is refused where
    # it comes in (import, sign-up form), not found out at every send.
    with pytest.raises(InvalidEmail, match="'zoë@example.org' is not a valid address: .*before the @-sign"):
        parse_address("zoë@example.org")


def test_the_reason_names_the_address() -> None:
    with pytest.raises(InvalidEmail, match="not-an-address"):
        parse_address("not-an-address")


@pytest.mark.parametrize("raw", ["ann.lee@example", "bob@-bad.com", "cy@bad..dom"])
def test_a_bad_domain_error_shows_the_whole_address_typed(raw: str) -> None:
    # The domain's verdict is remembered per domain; the message still names this address.
    for _ in range(2):
        with pytest.raises(InvalidEmail) as info:
            parse_address(raw)
        assert str(info.value).startswith(f"{raw!r} is not a valid address: ")


# Local parts drawn to hit the fast path and its edges (dots, plus, case, odd characters that
# must fall back to email-validator).
_local = st.text(alphabet="aZ09._+-!#'é \"", min_size=1, max_size=70)
_domain = st.sampled_from(
    ["example.com", "EXAMPLE.org", "exämple.de", "a.b", "x.y.z.co.uk", "bad..dom", "-bad.com", "localhost"]
)


@settings(max_examples=400, deadline=None)
@given(local=_local, domain=_domain)
def test_the_fast_path_agrees_with_email_validator(local: str, domain: str) -> None:
    raw = f"{local}@{domain}"
    try:  # parse_address trims surrounding blanks first
        expected = validate_email(raw.strip(), check_deliverability=False, allow_smtputf8=False)
    except EmailNotValidError:
        with pytest.raises(InvalidEmail):
            parse_address(raw)
        return
    address = parse_address(raw)
    assert address.email == expected.normalized
    assert address.normalized == f"{expected.local_part.lower()}@{expected.ascii_domain.lower()}"


@pytest.mark.parametrize(
    ("raw", "clean"),
    [
        ("Eve\r\nBcc: x@y", "Eve Bcc: x@y"),
        ("Ann\nLee", "Ann Lee"),
        ("  Ann   Lee\t", "Ann Lee"),
        ("Null\x00Byte\x1b[31m", "NullByte[31m"),
        ("evil\u202egnp.exe", "evilgnp.exe"),
        ("Ann\u200fLee\u200e\u061c", "AnnLee"),  # the bidi marks too, not only the overrides
        ("line\u2028sep", "line sep"),
        ("Zoë Ørsted-Łukasz 李", "Zoë Ørsted-Łukasz 李"),
        ("Lee, Ann", "Lee, Ann"),
        ("", ""),
        (None, ""),
    ],
)
def test_names_are_made_safe_for_a_header(raw: str | None, clean: str) -> None:
    assert clean_name(raw) == clean


def test_names_are_cut_at_200_characters() -> None:
    assert clean_name("x" * 500) == "x" * 200


@given(st.text())
def test_no_cleaned_name_can_break_a_header(raw: str) -> None:
    name = clean_name(raw)
    assert "\r" not in name and "\n" not in name
    assert not any(unicodedata.category(ch) in ("Cc", "Zl", "Zp") for ch in name)
    assert name == name.strip() and "  " not in name
    assert len(name) <= 200


def test_suppression_hash_is_one_way_stable_and_namespaced() -> None:
    digest = suppression_hash("ann@example.org")
    assert digest == suppression_hash("ann@example.org")
    assert len(digest) == 64 and "ann" not in digest
    assert digest != hashlib.sha256(b"ann@example.org").hexdigest()
    assert digest != suppression_hash("bob@example.org")
