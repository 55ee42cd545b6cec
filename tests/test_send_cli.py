"""`newsletter send`, `send-test` and `sends ...` run as a user runs them (Click's runner)."""

from __future__ import annotations

import json
import os
import pty
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from email import message_from_bytes, policy
from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from pipeline.commands.base import readable_time
from pipeline.config import Settings
from pipeline.models import Delivery, Essay, Issue
from subscribers import consent
from tests.conftest import CLI
from tests.smtp_faults import add_audience, fault_server, smtp_settings

PROJECT_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def audience(engine: Engine) -> list:
    return add_audience(engine, 5)


def flat(result) -> str:  # noqa: ANN001
    """The output with Rich's line wrapping undone."""
    return " ".join(result.output.split())


def outbox(settings: Settings) -> list[Path]:
    folder = settings.delivery.outbox_dir
    return sorted(folder.glob("*.eml")) if folder.exists() else []


def test_send_asks_first_and_no_sends_nothing(run_cli: CLI, settings: Settings, audience: list) -> None:
    result = run_cli("send", "--latest", input="n\n")
    assert result.exit_code == 0
    assert "to 5 subscribers?" in flat(result) and "Nothing sent." in flat(result)
    assert outbox(settings) == []


def test_send_latest_through_the_outbox_then_again_sends_nothing(
    run_cli: CLI, settings: Settings, engine: Engine, audience: list
) -> None:
    result = run_cli("send", "--latest", input="y\n")
    assert result.exit_code == 0, result.output
    assert "5 sent this run" in flat(result) and "is sent." in flat(result)
    assert "Messages are in" in flat(result) and "(one .eml file each)" in flat(result)
    # A trial to the outbox counts as sent: the way to mail those essays for real is said.
    assert "now count as sent" in flat(result) and "issues new --resend --essay" in flat(result)
    assert "once config.toml's delivery section names an SMTP relay" in flat(result)
    files = outbox(settings)
    assert len(files) == 5
    recipients = sorted(message_from_bytes(f.read_bytes(), policy=policy.default)["To"].addresses[0].addr_spec
                        for f in files)
    assert recipients == sorted(p.email for p in audience)
    with Session(engine) as session:
        key = session.exec(select(Issue.key)).one()

    status = json.loads(run_cli("sends", "status", key, "--json").output)
    assert status["status"] == "sent" and status["counts"]["sent"] == 5
    listed = json.loads(run_cli("sends", "list", key, "--status", "sent", "--json").output)
    assert sorted(r["email"] for r in listed) == recipients
    assert all(r["message_id"].endswith("@essays.example.org>") for r in listed)
    table = run_cli("sends", "status", key).output  # a table: not flattened
    assert "sent" in table and "5" in table

    again = run_cli("send", key, "--yes")
    assert "sent already" in flat(again) and len(outbox(settings)) == 5
    latest = run_cli("send", "--latest", "--yes")
    assert latest.exit_code == 0 and "Nothing to send" in flat(latest)


def test_send_json_reports_the_run(run_cli: CLI, audience: list) -> None:
    result = run_cli("send", "--latest", "--json")
    data = json.loads(result.output)
    assert data["sent"] == 5 and data["finished"] and data["counts"]["sent"] == 5 and data["owed"] == 0


def test_dry_run_writes_nothing(run_cli: CLI, settings: Settings, engine: Engine, audience: list) -> None:
    result = run_cli("send", "--latest", "--dry-run", "--yes")
    assert result.exit_code == 0 and "5 messages built" in flat(result)
    assert outbox(settings) == []
    # A script reading the JSON must not take built messages for sent ones.
    data = json.loads(run_cli("send", "--latest", "--dry-run", "--json").stdout)
    assert (data["sent"], data["built"], data["ending"]) == (0, 5, "dry-run")
    with Session(engine) as session:
        assert session.exec(select(Delivery)).all() == [] and session.exec(select(Issue)).all() == []


def test_a_draft_carrying_a_held_essay_goes_out_only_when_named(
    run_cli: CLI, settings: Settings, engine: Engine, audience: list
) -> None:
    """`essays hold` keeps an essay out of what the program picks by itself: `send --latest`
    took the newest open draft and mailed it, held essay and all. Named, the draft is sent."""
    assert run_cli("issues", "new", "--key", "by-hand").exit_code == 0
    assert run_cli("essays", "hold", "essay-001").exit_code == 0
    for args in (["--latest"], ["latest"], ["--latest", "--dry-run"], ["--latest", "--enqueue"]):
        refused = run_cli("send", *args, "--yes")
        assert refused.exit_code == 1, (args, refused.output)
        words = flat(refused)
        assert "by-hand was not sent: it carries essay-001, held" in words, words
        assert "`newsletter issues edit by-hand --remove-essay essay-001`" in words
        assert "`newsletter essays release essay-001`" in words and "`newsletter send by-hand`" in words
    assert outbox(settings) == []
    with Session(engine) as session:
        assert session.exec(select(Issue.status)).all() == ["draft"]
        assert session.exec(select(Delivery)).all() == []

    asked = run_cli("send", "by-hand", input="n\n")
    assert "(it carries essay-001, held)?" in flat(asked) and outbox(settings) == []
    sent = run_cli("send", "by-hand", "--yes")
    assert sent.exit_code == 0, sent.output
    assert "by-hand carries essay-001, held: sent because it was named." in flat(sent)
    assert len(outbox(settings)) == 5


def test_send_test_sends_one_marked_copy_and_records_nothing(
    run_cli: CLI, settings: Settings, engine: Engine, audience: list
) -> None:
    run_cli("issues", "new")
    with Session(engine) as session:
        key = session.exec(select(Issue.key)).one()
    result = run_cli("send-test", key, "--to", "me@example.org")
    assert result.exit_code == 0, result.output
    files = outbox(settings)
    assert len(files) == 1
    msg = message_from_bytes(files[0].read_bytes(), policy=policy.default)
    assert msg["Subject"].startswith("[TEST] ") and msg["To"].addresses[0].addr_spec == "me@example.org"
    assert "preview-sample" in msg["List-Unsubscribe"]  # not a subscriber: an inert link
    as_reader = run_cli("send-test", key, "--to", audience[1].email)
    assert as_reader.exit_code == 0
    reader_copy = [message_from_bytes(f.read_bytes(), policy=policy.default) for f in outbox(settings)]
    assert any(m["To"].addresses[0].display_name == audience[1].name for m in reader_copy)
    with Session(engine) as session:
        assert session.exec(select(Delivery)).all() == []
        assert session.exec(select(Issue.status)).one() == "draft"


def test_bad_requests_get_clear_errors(run_cli: CLI, audience: list) -> None:
    both = run_cli("send")
    assert both.exit_code == 2 and "--latest" in flat(both)
    missing = run_cli("send", "no-such-issue", "--yes")
    assert missing.exit_code == 1 and "no issue with the id or key 'no-such-issue'" in flat(missing)
    run_cli("send", "--latest", "--yes")
    assert run_cli("sends", "retry", "1").exit_code == 2
    nothing = run_cli("sends", "retry", "1", "--failed", "--unknown")
    assert nothing.exit_code == 0 and "No failed or unknown deliveries" in flat(nothing)


def test_send_usage_errors_say_which_mistake(run_cli: CLI, audience: list) -> None:
    neither = run_cli("send")
    assert neither.exit_code == 2 and "not both" not in neither.output  # nothing was given twice
    assert "name an ISSUE (id, key or latest) or pass --latest" in flat(neither)
    both = run_cli("send", "1", "--latest")
    assert both.exit_code == 2 and "not both" in flat(both)
    assert "id, key or latest" in flat(run_cli("send", "--help"))  # `send latest` works too


def test_sends_status_prints_the_whole_key_on_one_line(run_cli: CLI, audience: list) -> None:
    assert run_cli("send", "--latest", "--yes").exit_code == 0
    key = run_cli("issues", "show", "latest", "--json")
    shown = run_cli("sends", "status", "latest")
    assert shown.exit_code == 0 and f"{json.loads(key.output)['key']} (sent)" in shown.output


def test_an_unreachable_relay_pauses_with_exit_code_1(tmp_path: Path, engine: Engine) -> None:
    with fault_server() as probe:
        dead = probe.port
    settings = smtp_settings(tmp_path, dead)  # same folder, same database as `engine`
    add_audience(engine, 3)
    result = CLI(settings.path, CliRunner())("send", "--latest", "--yes")
    assert result.exit_code == 1
    assert "Paused" in flat(result) and "cannot connect to the SMTP server" in flat(result)
    assert "3 pending" in flat(result)


def test_retry_failed_resends_to_who_is_still_subscribed(tmp_path: Path, engine: Engine) -> None:
    with fault_server() as server:
        settings = smtp_settings(tmp_path, server.port)
        people = add_audience(engine, 4)
        for person in people[:2]:
            server.faults[person.email] = [("data", "554 5.6.0 rejected for now")]
        cli = CLI(settings.path, CliRunner())
        first = cli("send", "--latest", "--yes")
        assert "2 failed" in flat(first)
        with Session(engine) as session:
            consent.unsubscribe(session, people[0].email)
            key = session.exec(select(Issue.key)).one()
        failed = json.loads(cli("sends", "list", key, "--status", "failed", "--json").output)
        assert sorted(r["email"] for r in failed) == sorted(p.email for p in people[:2])
        retried = cli("sends", "retry", key, "--failed", "--yes")
        assert retried.exit_code == 0, retried.output
        assert "1 sent this run" in flat(retried)
        assert "(1 to readers no longer subscribed stay as they are)" in flat(retried)
        assert sorted(r.rcpt_tos[0] for r in server.received) == sorted(p.email for p in people[1:])
        # The unsubscribed reader's row keeps the relay's answer: it failed, and it says why.
        still = json.loads(cli("sends", "list", key, "--status", "failed", "--json").output)
        assert [(r["email"], r["smtp_code"]) for r in still] == [(people[0].email, 554)]


def test_terminal_codes_in_a_relay_reply_print_escaped(tmp_path: Path, engine: Engine) -> None:
    # The relay's words are stored and shown again: they must not retitle or clear the terminal.
    with fault_server() as server:
        settings = smtp_settings(tmp_path, server.port)
        people = add_audience(engine, 2)
        server.faults[people[0].email] = [("data", "554 5.6.0 \x1b]0;pwned\x07\x1b[2Jrejected")]
        cli = CLI(settings.path, CliRunner(env={"COLUMNS": "300"}))  # one row a line
        sent = cli("send", "--latest", "--yes")
        listed = cli("sends", "list", "latest", "--status", "failed")
    for result in (sent, listed):
        assert "\x1b" not in result.output and "\x07" not in result.output
        assert "\\x1b]0;pwned\\x07\\x1b[2Jrejected" in result.output


def test_sends_list_limit_0_shows_all_like_subscribers_list(run_cli: CLI, audience: list) -> None:
    assert run_cli("send", "--latest", "--yes").exit_code == 0
    every = json.loads(run_cli("sends", "list", "latest", "--limit", "0", "--json").output)
    assert len(every) == len(audience)  # 0 meant "none" before: an empty table
    two = run_cli("sends", "list", "latest", "--limit", "2")
    assert two.exit_code == 0 and f"Showing 2 of {len(audience)}; --limit 0 shows all." in flat(two)
    # With --json the list stays plain JSON on stdout, and stderr says that rows were left out.
    cut = run_cli("sends", "list", "latest", "--limit", "2", "--json")
    assert len(json.loads(cut.stdout)) == 2
    assert f"Showing 2 of {len(audience)}; --limit 0 shows all." in cut.stderr
    assert run_cli("sends", "list", "latest", "--limit", "-1").exit_code == 2


def test_send_asks_about_1_subscriber_in_good_english(run_cli: CLI, engine: Engine) -> None:
    add_audience(engine, 1)
    result = run_cli("send", "--latest", input="n\n")
    assert result.exit_code == 0 and "to 1 subscriber?" in flat(result)


def test_send_draws_its_bar_on_a_terminal_only(run_cli: CLI, settings: Settings, engine: Engine) -> None:
    """On a terminal the send shows its progress; piped (cron, a log) it prints the summary only."""
    add_audience(engine, 5)
    piped = subprocess.run(newsletter(run_cli, "send", "--latest", "--yes"), capture_output=True,
                           env=terminal_env(), cwd=PROJECT_ROOT, timeout=60)
    assert piped.returncode == 0, piped.stderr
    assert b"Sending" not in piped.stdout + piped.stderr and b"5 sent" in piped.stdout

    composed = run_cli("issues", "new", "--resend", "--key", "again", *slugs_of(engine))
    assert composed.exit_code == 0, composed.output
    main, side = pty.openpty()
    with subprocess.Popen(newsletter(run_cli, "send", "again", "--yes"), stdin=side, stdout=side,
                          stderr=side, env=terminal_env(), cwd=PROJECT_ROOT) as process:
        os.close(side)
        seen = b""
        while chunk := read_or_nothing(main):
            seen += chunk
        assert process.wait(60) == 0, seen.decode(errors="replace")
    os.close(main)
    assert b"Sending" in seen and b"5/5" in seen  # the bar, with its count
    assert len(outbox(settings)) == 10


def newsletter(run_cli: CLI, *args: str) -> list[str]:
    return [sys.executable, "-c", "from pipeline.cli import main; main()", "--config", str(run_cli.config_file), *args]


def terminal_env() -> dict[str, str]:
    env = {**os.environ, "TERM": "xterm-256color", "COLUMNS": "100"}
    env.pop("NO_COLOR", None)
    return env


def slugs_of(engine: Engine) -> list[str]:
    with Session(engine) as session:
        return [arg for essay in session.exec(select(Essay)) for arg in ("--essay", essay.slug)]


def read_or_nothing(fd: int) -> bytes:
    """What the terminal shows next; b"" once the command has ended and closed it."""
    try:
        return os.read(fd, 65536)
    except OSError:
        return b""


def test_without_a_terminal_and_without_yes_a_send_says_to_pass_yes(run_cli: CLI, engine: Engine) -> None:
    # From cron or a pipe there is nobody to answer: a bare "Aborted!" left the operator guessing.
    add_audience(engine, 2)
    result = run_cli("send", "--latest")  # the runner's stdin is no terminal, and empty
    assert result.exit_code == 1
    assert "there is no terminal to ask on: pass --yes to answer yes" in " ".join(result.output.split())
    assert json.loads(run_cli("sends", "status", "latest", "--json").output)["counts"]["sent"] == 0


def test_a_retry_time_is_shown_rounded_up_so_acting_at_it_finds_it_due() -> None:
    # "due at 00:04" for a retry at 00:04:26: a send run at 00:04 found nothing due and said 00:04 again.
    late = datetime(2026, 12, 1, 0, 4, 26, tzinfo=UTC)
    assert readable_time(late, not_before=True) == "2026-12-01 00:05 UTC"
    assert readable_time(late.replace(second=0), not_before=True) == "2026-12-01 00:04 UTC"
    assert readable_time(late) == "2026-12-01 00:04 UTC"  # a moment past: shown as it was


def test_a_key_file_that_cannot_be_read_stops_the_send_before_the_issue_starts(run_cli: CLI, engine: Engine) -> None:
    # It was read after the audience was frozen: a traceback, and the issue left `sending`.
    add_audience(engine, 2)
    key = run_cli.config_file.parent / ".secret_key"
    key.unlink(missing_ok=True)
    key.mkdir()
    result = run_cli("send", "--latest", "--yes")
    assert result.exit_code == 1 and "cannot read the secret key file" in result.output
    assert [i["status"] for i in json.loads(run_cli("issues", "list", "--json").output)] == ["draft"]


def test_a_retry_past_the_issue_s_last_day_changes_nothing(tmp_path: Path, engine: Engine) -> None:
    """A weekly issue may not be sent after its not_after. `sends retry` then refused the send, but
    had already reopened the issue (sent -> sending): the next run-due expired it, and its web
    copy, linked from every copy delivered, was gone from the archive."""
    with fault_server() as server:
        settings = smtp_settings(tmp_path, server.port)
        people = add_audience(engine, 3)
        server.faults[people[0].email] = [("data", "554 5.6.0 rejected for now")]
        cli = CLI(settings.path, CliRunner())
        assert "1 failed" in flat(cli("send", "--latest", "--yes"))
        with Session(engine) as session:
            issue = session.exec(select(Issue)).one()
            issue.not_after = datetime.now(UTC) - timedelta(hours=1)
            session.add(issue)
            session.commit()
            key = issue.key
        retried = cli("sends", "retry", key, "--failed", "--yes")
        assert retried.exit_code == 1 and "may not be sent after" in flat(retried)
        assert "nothing was changed" in flat(retried)
        status = json.loads(cli("sends", "status", key, "--json").output)
        assert status["status"] == "sent" and status["counts"]["failed"] == 1
