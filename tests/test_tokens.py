"""Tokens: bound to purpose and subscriber, tamper-proof, confirm tokens expire, the key file."""

from __future__ import annotations

import os
import stat
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
from itsdangerous import URLSafeSerializer, URLSafeTimedSerializer

from subscribers.errors import BadToken, ExpiredToken, SubscriberError
from subscribers.tokens import (
    CONFIRM,
    SECRET_ENV,
    UNSUBSCRIBE,
    load_secret,
    make_token,
    read_token,
    read_token_issued,
)

SECRET = "test-secret-" + "x" * 20


def test_a_token_names_its_subscriber_and_is_url_safe() -> None:
    token = make_token(SECRET, UNSUBSCRIBE, 4711)
    assert read_token(SECRET, UNSUBSCRIBE, token) == 4711
    assert all(c.isalnum() or c in "-_." for c in token)
    assert "4711" not in token  # opaque: the id is not in clear text
    assert make_token(SECRET, UNSUBSCRIBE, 4712) != token


B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"


@pytest.mark.parametrize("position", [0, 1, 5, -1, -2, -10])
def test_changing_any_character_makes_the_token_worthless(position: int) -> None:
    token = make_token(SECRET, UNSUBSCRIBE, 42)
    chars = list(token)
    if chars[position] == ".":
        position += 1
    # Flip the top bit of the character's 6 bits: always a data bit (the last character of a
    # base64 segment also carries padding bits, and changing only those changes no byte).
    chars[position] = B64[B64.index(chars[position]) ^ 0b100000]
    with pytest.raises(BadToken):
        read_token(SECRET, UNSUBSCRIBE, "".join(chars))


def test_a_token_signed_with_another_key_is_refused() -> None:
    token = make_token("another-key", UNSUBSCRIBE, 42)
    with pytest.raises(BadToken):
        read_token(SECRET, UNSUBSCRIBE, token)


def test_a_token_is_bound_to_its_purpose() -> None:
    confirm = make_token(SECRET, CONFIRM, 42)
    unsubscribe = make_token(SECRET, UNSUBSCRIBE, 42)
    with pytest.raises(BadToken):
        read_token(SECRET, UNSUBSCRIBE, confirm)
    with pytest.raises(BadToken):
        read_token(SECRET, CONFIRM, unsubscribe)


def test_a_forged_payload_for_another_subscriber_is_refused() -> None:
    # Splice the payload of subscriber 43's token with the signature of subscriber 42's.
    mine = make_token(SECRET, UNSUBSCRIBE, 42)
    theirs = make_token(SECRET, UNSUBSCRIBE, 43)
    forged = theirs.split(".")[0] + "." + ".".join(mine.split(".")[1:])
    with pytest.raises(BadToken):
        read_token(SECRET, UNSUBSCRIBE, forged)


@pytest.mark.parametrize("garbage", ["", "abc", "a.b.c", "../../etc/passwd", "é" * 10])
def test_garbage_is_a_bad_token_not_a_crash(garbage: str) -> None:
    with pytest.raises(BadToken):
        read_token(SECRET, UNSUBSCRIBE, garbage)


def test_confirm_tokens_expire_and_unsubscribe_tokens_do_not(monkeypatch: pytest.MonkeyPatch) -> None:
    confirm = make_token(SECRET, CONFIRM, 7)
    unsubscribe = make_token(SECRET, UNSUBSCRIBE, 7)
    assert read_token(SECRET, CONFIRM, confirm) == 7
    # Eight days later (itsdangerous reads the clock through time.time).
    later = time.time() + 8 * 24 * 3600
    monkeypatch.setattr(time, "time", lambda: later)
    with pytest.raises(ExpiredToken):
        read_token(SECRET, CONFIRM, confirm)
    assert read_token(SECRET, UNSUBSCRIBE, unsubscribe) == 7
    # An expired token is still a bad token for callers that do not care why.
    with pytest.raises(BadToken):
        read_token(SECRET, CONFIRM, confirm)


def test_an_unsubscribe_link_is_the_same_in_every_message(monkeypatch: pytest.MonkeyPatch) -> None:
    # A retry, a preview and the sent copy must carry the same link, whenever they are made.
    first = make_token(SECRET, UNSUBSCRIBE, 7)
    later = time.time() + 3 * 24 * 3600
    monkeypatch.setattr(time, "time", lambda: later)
    assert make_token(SECRET, UNSUBSCRIBE, 7) == first
    assert make_token(SECRET, UNSUBSCRIBE, 8) != first


@pytest.mark.parametrize("secret", [SECRET, "k", "clé-ünïcode-" + "z" * 40])
def test_unsubscribe_tokens_are_byte_for_byte_what_itsdangerous_makes(secret: str) -> None:
    # make_token signs unsubscribe tokens with a cached key; links in emails already sent must
    # keep working, so every token must equal the plain itsdangerous one, on both sides of the
    # ids where the shortcut stops (10**10) and where itsdangerous starts compressing.
    reference = URLSafeSerializer(secret, salt="newsletter.subscribers.unsubscribe")
    ids = [*range(1, 400), 4711, 99_999, 10**9 + 7, 10**10 - 1, 10**10, 10**10 + 1,
           11_111_111_111, 1_111_111_111_111_111, 2**63 - 1]
    for subscriber_id in ids:
        token = make_token(secret, UNSUBSCRIBE, subscriber_id)
        assert token == reference.dumps(subscriber_id), subscriber_id
        assert read_token(secret, UNSUBSCRIBE, token) == subscriber_id


def test_max_age_is_the_callers_choice(monkeypatch: pytest.MonkeyPatch) -> None:
    token = make_token(SECRET, CONFIRM, 7)
    later = time.time() + 120
    monkeypatch.setattr(time, "time", lambda: later)
    assert read_token(SECRET, CONFIRM, token, max_age=3600) == 7
    with pytest.raises(ExpiredToken):
        read_token(SECRET, CONFIRM, token, max_age=60)


def test_unknown_purpose_is_a_programming_error() -> None:
    with pytest.raises(ValueError):
        make_token(SECRET, "login", 1)


def test_secret_comes_from_the_environment_first(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(SECRET_ENV, "from-the-environment")
    assert load_secret(tmp_path) == "from-the-environment"
    assert not (tmp_path / ".secret_key").exists()


@pytest.mark.parametrize(("value", "why"), [("a", "the key is 1 characters; use at least 16"),
                                            ("\udcff\udcfe" * 10, "the key is not UTF-8 text")])
def test_a_key_anyone_could_guess_or_no_text_at_all_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                              value: str, why: str) -> None:
    # A one-letter key let anyone forge every unsubscribe and confirm link; bytes that are no
    # text crashed the send that signed with them.
    monkeypatch.setenv(SECRET_ENV, value)
    with pytest.raises(SubscriberError, match=f"\\${SECRET_ENV}: {why}"):
        load_secret(tmp_path)


def test_an_unreadable_key_file_is_an_error_naming_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(SECRET_ENV, raising=False)
    (tmp_path / ".secret_key").mkdir()  # unreadable as a file, even for root
    with pytest.raises(SubscriberError, match="cannot read the secret key file .*secret_key: Is a directory"):
        load_secret(tmp_path)


def test_secret_file_is_created_private_once_and_reused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(SECRET_ENV, raising=False)
    told: list[str] = []
    first = load_secret(tmp_path, announce=told.append)
    path = tmp_path / ".secret_key"
    assert path.is_file()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert len(first) >= 32
    assert len(told) == 1 and str(path) in told[0]
    second = load_secret(tmp_path, announce=told.append)
    assert second == first
    assert len(told) == 1  # said only when created
    assert [p.name for p in tmp_path.iterdir()] == [".secret_key"]  # no temporary left behind
    # Tokens made with the stored key survive a "restart".
    assert read_token(load_secret(tmp_path), UNSUBSCRIBE, make_token(first, UNSUBSCRIBE, 3)) == 3


def test_secret_file_is_ignored_by_git() -> None:
    gitignore = Path(__file__).resolve().parents[1] / ".gitignore"
    assert ".secret_key" in gitignore.read_text().split()


def test_an_empty_environment_variable_falls_back_to_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(SECRET_ENV, "  ")
    assert load_secret(tmp_path) == (tmp_path / ".secret_key").read_text().strip()
    assert os.environ[SECRET_ENV] == "  "


def test_a_confirm_token_knows_the_microsecond_it_was_made() -> None:
    before = datetime.now(UTC)
    token = make_token(SECRET, CONFIRM, 7)
    after = datetime.now(UTC)
    subscriber_id, issued = read_token_issued(SECRET, CONFIRM, token)
    assert subscriber_id == 7 and before <= issued <= after


def test_a_confirm_token_of_the_whole_second_kind_still_reads() -> None:
    old = URLSafeTimedSerializer(SECRET, salt="newsletter.subscribers.confirm").dumps(9)
    subscriber_id, issued = read_token_issued(SECRET, CONFIRM, old)
    assert subscriber_id == 9 and issued.microsecond == 0
