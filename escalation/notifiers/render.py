"""Human-readable text for pages: subject lines, plain text, HTML and SMS.

Everything is rendered from a page's payload alone (the dict the engine froze
when it queued the page, or the digest the outbox builds), so a page sent
again after a restart reads exactly as the first attempt did. Missing fields
render as blanks rather than failing: a page with a gap still beats no page.
"""

from __future__ import annotations

import html
import json
import re
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

SMS_LIMIT = 160
"""One GSM-7 segment: longer messages split and may arrive out of order."""

_KIND_PREFIX = {
    "resolved": "RESOLVED ",
    "reminder": "REMINDER ",
    "reopened": "REOPENED ",
}
_SUBJECT_REFS = 5
_EVIDENCE_LINES = 20
_EVIDENCE_LINE_CHARS = 300
"""Enough to act on from a phone; the full evidence is in the incident."""
_WHITESPACE = re.compile(r"\s+")
_ELLIPSIS = "..."
"""ASCII on purpose: a Unicode ellipsis forces UCS-2 and a 70-character SMS."""


def one_line(value: object) -> str:
    """`value` as text on one line: no header injection, no broken SMS."""
    return _WHITESPACE.sub(" ", "" if value is None else str(value)).strip()


def is_digest(payload: Mapping[str, Any]) -> bool:
    return payload.get("kind") == "digest"


def digest_items(payload: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    items = payload.get("pages")
    if not isinstance(items, list):
        return []
    return [item for item in items if isinstance(item, Mapping)]


def headline(payload: Mapping[str, Any]) -> str:
    """``[P1] INC-7 Database unreachable``."""
    priority = one_line(payload.get("priority"))
    incident = one_line(payload.get("incident"))
    summary = one_line(payload.get("summary"))
    return " ".join(
        part
        for part in (f"[{priority}]" if priority else "", incident, summary)
        if part
    )


def subject(payload: Mapping[str, Any]) -> str:
    """An email subject: the headline, prefixed RESOLVED, REMINDER or REOPENED."""
    if is_digest(payload):
        items = digest_items(payload)
        refs = list(dict.fromkeys(one_line(item.get("incident")) for item in items))
        shown = ", ".join(refs[:_SUBJECT_REFS])
        if len(refs) > _SUBJECT_REFS:
            shown += f" and {len(refs) - _SUBJECT_REFS} more"
        priority = one_line(payload.get("priority"))
        return f"[{priority}] {len(items)} pages held back: {shown}"
    prefix = _KIND_PREFIX.get(str(payload.get("kind")), "")
    return prefix + headline(payload)


def plain_text(payload: Mapping[str, Any]) -> str:
    """The body of an email or any other long-form message."""
    if is_digest(payload):
        return _digest_text(payload)
    lines = [subject(payload), ""]
    ack_url = payload.get("ack_url")
    if ack_url and payload.get("kind") != "resolved":
        lines.append(f"Acknowledge: {ack_url}")
        expires = _when(payload.get("ack_expires_at"))
        if expires:
            lines.append(f"(the link works once and expires {expires})")
        lines.append("")
    lines.extend(f"{label}: {value}" for label, value in _facts(payload))
    note = one_line(payload.get("note"))
    if note:
        lines.extend(["", f"Note: {note}"])
    evidence = _evidence(payload)
    if evidence:
        lines.extend(["", "Evidence:"])
        for check in evidence:
            lines.append(f"- {check['title']}")
            lines.extend(f"    {detail}" for detail in check["details"])
    return "\n".join(lines) + "\n"


def html_text(payload: Mapping[str, Any]) -> str:
    """The HTML alternative of `plain_text`; every value is escaped."""
    esc = html.escape
    if is_digest(payload):
        return _digest_html(payload)
    parts = [f"<h2>{esc(subject(payload))}</h2>"]
    ack_url = payload.get("ack_url")
    if ack_url and payload.get("kind") != "resolved":
        url = esc(str(ack_url), quote=True)
        parts.append(
            f'<p><a href="{url}"><strong>Acknowledge</strong></a> {esc(str(ack_url))}'
        )
        expires = _when(payload.get("ack_expires_at"))
        if expires:
            parts.append(f"<br>The link works once and expires {esc(expires)}.")
        parts.append("</p>")
    rows = "".join(
        f'<tr><th align="left">{esc(label)}</th><td>{esc(value)}</td></tr>'
        for label, value in _facts(payload)
    )
    parts.append(f"<table>{rows}</table>")
    note = one_line(payload.get("note"))
    if note:
        parts.append(f"<p><strong>Note:</strong> {esc(note)}</p>")
    evidence = _evidence(payload)
    if evidence:
        parts.append("<h3>Evidence</h3><ul>")
        for check in evidence:
            details = "".join(f"<br><code>{esc(d)}</code>" for d in check["details"])
            parts.append(f"<li>{esc(check['title'])}{details}</li>")
        parts.append("</ul>")
    return "<html><body>" + "\n".join(parts) + "</body></html>\n"


def sms_text(payload: Mapping[str, Any], limit: int = SMS_LIMIT) -> str:
    """At most `limit` characters with the whole ack link; the summary is
    what gets cut, never the link."""
    if is_digest(payload):
        items = digest_items(payload)
        head = f"{len(items)} pages {one_line(payload.get('priority'))}:"
        body = "; ".join(
            f"{one_line(item.get('incident'))} {one_line(item.get('summary'))}"
            for item in items
        )
        first = one_line(payload.get("incident"))
        ack_url = one_line(payload.get("ack_url"))
        tail = f"Ack {first}: {ack_url}" if ack_url else ""
    else:
        prefix = _KIND_PREFIX.get(str(payload.get("kind")), "")
        head = prefix + " ".join(
            part
            for part in (
                one_line(payload.get("priority")),
                one_line(payload.get("incident")),
            )
            if part
        )
        body = one_line(payload.get("summary"))
        ack_url = one_line(payload.get("ack_url"))
        tail = (
            f"Ack: {ack_url}" if ack_url and payload.get("kind") != "resolved" else ""
        )
        if head and body:
            head += ":"
    return _fit(head, body, tail, limit)


def _fit(head: str, body: str, tail: str, limit: int) -> str:
    def join(*parts: str) -> str:
        return " ".join(part for part in parts if part)

    full = join(head, body, tail)
    if len(full) <= limit:
        return full
    room = limit - len(join(head, "x", tail)) + 1
    if room > len(_ELLIPSIS):
        return join(head, body[: room - len(_ELLIPSIS)].rstrip() + _ELLIPSIS, tail)
    # Over the limit only when the head and link alone are: a page split in
    # two segments still beats one without a working link.
    return join(head, tail)


def _facts(payload: Mapping[str, Any]) -> list[tuple[str, str]]:
    facts = [
        ("Incident", one_line(payload.get("incident"))),
        ("Priority", one_line(payload.get("priority"))),
        ("Category", one_line(payload.get("category"))),
        ("State", one_line(payload.get("state"))),
        ("Started", _when(payload.get("started_at"))),
    ]
    step, total = payload.get("step"), payload.get("steps_total")
    if step:
        ladder = f"{step} of {total}" if total else str(step)
        repeat = payload.get("repeat")
        if isinstance(repeat, int) and repeat > 0:
            ladder += f" (repeat {repeat})"
        facts.append(("Ladder step", ladder))
    name = one_line(payload.get("contact_name") or payload.get("contact"))
    role = one_line(payload.get("role"))
    if name:
        facts.append(("Paged", f"{name} ({role})" if role else name))
    return [(label, value) for label, value in facts if value]


def _evidence(payload: Mapping[str, Any]) -> list[dict[str, Any]]:
    raw = payload.get("evidence")
    if not isinstance(raw, Sequence) or isinstance(raw, str):
        return []
    checks = []
    for result in raw:
        if not isinstance(result, Mapping):
            continue
        name = one_line(result.get("check")) or "?"
        kind = one_line(result.get("type"))
        status = one_line(result.get("status"))
        message = one_line(result.get("message"))
        title = name + (f" ({kind})" if kind else "")
        title += f": {status}" if status else ""
        title += f" - {message}" if message else ""
        details = []
        values = result.get("values")
        if isinstance(values, Mapping) and values:
            details.append(" ".join(f"{k}={_number(v)}" for k, v in values.items()))
        lines = result.get("evidence")
        if isinstance(lines, Sequence) and not isinstance(lines, str):
            kept = [_clip(one_line(line)) for line in lines if one_line(line)]
            details.extend(kept[:_EVIDENCE_LINES])
            if len(kept) > _EVIDENCE_LINES:
                details.append(f"(and {len(kept) - _EVIDENCE_LINES} more lines)")
        checks.append({"title": title, "details": details})
    return checks


def _clip(text: str) -> str:
    if len(text) <= _EVIDENCE_LINE_CHARS:
        return text
    return text[: _EVIDENCE_LINE_CHARS - len(_ELLIPSIS)] + _ELLIPSIS


def _digest_text(payload: Mapping[str, Any]) -> str:
    items = digest_items(payload)
    lines = [subject(payload), "", one_line(payload.get("summary")), ""]
    for item in items:
        lines.append(_item_headline(item))
        if item.get("ack_url") and item.get("kind") != "resolved":
            lines.append(f"  Acknowledge: {item['ack_url']}")
    return "\n".join(lines) + "\n"


def _digest_html(payload: Mapping[str, Any]) -> str:
    esc = html.escape
    parts = [
        f"<h2>{esc(subject(payload))}</h2>",
        f"<p>{esc(one_line(payload.get('summary')))}</p>",
        "<ul>",
    ]
    for item in digest_items(payload):
        link = ""
        if item.get("ack_url") and item.get("kind") != "resolved":
            url = esc(str(item["ack_url"]), quote=True)
            link = f' <a href="{url}">Acknowledge</a>'
        parts.append(f"<li>{esc(_item_headline(item))}{link}</li>")
    parts.append("</ul>")
    return "<html><body>" + "\n".join(parts) + "</body></html>\n"


def _item_headline(item: Mapping[str, Any]) -> str:
    prefix = _KIND_PREFIX.get(str(item.get("kind")), "")
    return prefix + headline(item)


def _when(value: object) -> str:
    """An instant as ISO 8601 UTC, whether it came as epoch seconds or text."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        moment = datetime.fromtimestamp(value, UTC).replace(microsecond=0)
        return moment.isoformat().replace("+00:00", "Z")
    return one_line(value)


def _number(value: object) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, int | float | str):
        return str(value)
    return json.dumps(value, default=str)
