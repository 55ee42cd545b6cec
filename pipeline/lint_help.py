"""What to do about each email-checklist finding: one fix per code, and where it is explained."""

from __future__ import annotations

# The checklist with an explanation of every code lives in the project (docs/), so lint output,
# the preview's Checks tab and the README can all point at one section per code.
CHECKLIST = "docs/email-checklist.md"

FIXES: dict[str, str] = {
    "H1": "Shorten the digest: lower digest.max_essays or digest.excerpt_length, or trim a "
          "template; Gmail clips HTML over 102 KB and hides the unsubscribe link with it.",
    "H2": "Keep the CSS left in <style> small and valid: move rules into inline styles (the "
          "inliner does this) and do not nest @media inside another at-rule.",
    "H3": "Only @media blocks may stay in <style>: write other rules so premailer can inline them.",
    "H4": "Mark every declaration inside @media !important, or inline styles win over it.",
    "H5": "Remove scripts, forms, iframes, embeds, video/audio, inline SVG, <base>, on*= "
          "attributes and javascript: URLs from the template: mail clients strip or block them.",
    "H6": "Put the CSS in the template's <style> (digest.css); no <link rel=stylesheet>, no @import.",
    "H7": "Replace the unsupported CSS (position, grid, flex, variables, web fonts without a "
          "fallback, base64 images) or keep it as an enhancement the layout does not need.",
    "H8": "Keep the table layout of the built-in digest.html: a 100% wrapper, a content table "
          "of at most 600 px, the Outlook-only table, and role=presentation on every table.",
    "H9": "Give every <img> an alt text (alt=\"\" for decoration).",
    "H10": "Give every <img> an integer width attribute (width=\"536\", no % or px).",
    "H11": "Make every link absolute https (or mailto/tel): set web.base_url and "
           "newsletter.site_url to https:// addresses (see the README, \"Deployment\").",
    "H12": "Keep lang and dir on <html>: set newsletter.language and newsletter.direction.",
    "H13": "Keep <meta charset=\"utf-8\"> at the top of <head>, within the first 1024 bytes.",
    "H14": "Keep the doctype, a non-empty <title> and the viewport meta in the template.",
    "H15": "Keep the hidden preheader as the first element of <body> (it is the inbox preview line).",
    "H16": "Balance every <!--[if mso]> with an <![endif]--> in the template.",
    "H17": "Add a bgcolor attribute beside each background-color on table, td and body (Outlook).",
    "H18": "Keep the color-scheme metas and the prefers-color-scheme rules for dark mode.",
    "H19": "Change the colour of the text or of its background: they are (nearly) the same.",
    "H20": "Fix the HTML the message names: duplicate ids or elements nested where they may not be.",
    "H21": "Keep the footer's unsubscribe link, and set newsletter.postal_address in config.toml "
           "(bulk mail law wants a postal address in every issue).",
    "H22": "Link to the real address instead of a shortener, and serve images over https.",
    "H23": "Rendering must not depend on dict or set order: report it as a bug.",
    "H24": "Inline style attributes take declarations only: remove the {...} block.",
    "M1": "A header is missing or repeated: report it as a bug (the message builder sets them).",
    "M2": "The Date header is wrong: check the machine's clock and timezone.",
    "M3": "Message-ID must be on the sender's domain: set newsletter.sender_address on a domain you control.",
    "M4": "The message must be multipart/alternative, text first: a custom template may have dropped a part.",
    "M5": "The text part must carry the same content as the HTML: keep digest.txt in step with digest.html.",
    "M6": "Non-ASCII text must be encoded: report it as a bug (the message builder does this).",
    "M7": "A line is too long for SMTP: report it as a bug (long lines are encoded).",
    "M8": "The message does not parse cleanly: report it with the .eml (Download .eml in the preview).",
    "M9": "List-Unsubscribe needs an https one-click URL: set web.base_url to the https address "
          "of `newsletter serve` (README, \"Deployment\").",
    "M10": "List-Unsubscribe-Post is missing: report it as a bug.",
    "M11": "The unsubscribe URL must accept a one-click POST: run `newsletter serve` at web.base_url.",
    "M12": "List-Id must stay the same across issues: keep newsletter.name and the sender's domain.",
    "M13": "Precedence: bulk is missing: report it as a bug.",
    "M14": "Sign with DKIM: set delivery.dkim_key and delivery.dkim_selector and publish the "
           "public key in DNS (README, \"Deployment\").",
    "M15": "Report it as a bug.",
    "M16": "One recipient per message: report it as a bug.",
}


def fix_for(code: str) -> str:
    """The fix for a finding's code ("" for a code this table does not know)."""
    return FIXES.get(code, "")


def anchor(code: str) -> str:
    """The section of the checklist explaining `code`, e.g. docs/email-checklist.md#h11."""
    return f"{CHECKLIST}#{code.lower()}"
