"""The oracle of pipeline/message.py: a digest copy built the slow, obvious way with the stdlib."""

from __future__ import annotations

import dataclasses
from datetime import datetime
from email import policy
from email.headerregistry import Address
from email.message import EmailMessage
from email.utils import format_datetime

from pipeline.config import Settings
from pipeline.message import ascii_address, clean_header_text, list_id, list_unsubscribe
from pipeline.render import Recipient, RenderedIssue


def reference_message(settings: Settings, rendered: RenderedIssue, recipient: Recipient,
                      message_id: str, date: datetime, subject_prefix: str = "",
                      feedback_id: str = "") -> bytes:
    """The message MessageFactory builds, made the slow, obvious way with EmailMessage."""
    news = settings.newsletter
    clean = dataclasses.replace(recipient, name=clean_header_text(recipient.name),
                                email=clean_header_text(recipient.email),
                                unsubscribe_url=clean_header_text(recipient.unsubscribe_url))
    html, text = rendered.personalise(clean)
    msg = EmailMessage(policy=policy.SMTP)
    msg["From"] = Address(news.sender_name, addr_spec=news.sender_address)
    msg["To"] = Address(clean.name, addr_spec=ascii_address(recipient.email))
    msg["Subject"] = clean_header_text(subject_prefix + rendered.subject)
    msg["Date"] = format_datetime(date)
    msg["Message-ID"] = message_id
    msg["List-Id"] = list_id(settings).replace("\r\n", "")
    if feedback_id:
        msg["Feedback-ID"] = feedback_id
    msg["List-Unsubscribe"] = list_unsubscribe(settings, clean.unsubscribe_url).replace("\r\n", "")
    msg["List-Unsubscribe-Post"] = "List-Unsubscribe=One-Click"
    msg["Precedence"] = "bulk"
    msg.set_content(text, subtype="plain", charset="utf-8", cte="quoted-printable")
    msg.add_alternative(html, subtype="html", charset="utf-8", cte="quoted-printable")
    return msg.as_bytes(policy=policy.SMTP)
