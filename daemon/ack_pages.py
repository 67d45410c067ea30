"""The small HTML pages behind an acknowledgement link: the confirm form the
link opens, and the answers to the POST. Every value is escaped; the pages
load nothing from anywhere, and their headers forbid framing and caching."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
from html import escape

from escalation.model import Incident, IncidentState

_STYLE = (
    "body{font-family:system-ui,sans-serif;max-width:34rem;margin:2rem auto;"
    "padding:0 1rem;line-height:1.45;color:#1b1b1b}"
    "h1{font-size:1.35rem}"
    "dl{display:grid;grid-template-columns:auto 1fr;gap:.3rem 1rem}"
    "dt{font-weight:600}dd{margin:0}"
    "button{font-size:1.1rem;padding:.7rem 1.4rem;border:0;border-radius:.4rem;"
    "background:#b3261e;color:#fff;cursor:pointer}"
    ".note{color:#555;font-size:.9rem}"
)
# The one inline stylesheet is allowed by its hash, so the policy can forbid
# every other style and all scripts.
_STYLE_HASH = base64.b64encode(hashlib.sha256(_STYLE.encode()).digest()).decode()

SECURITY_HEADERS = {
    "Cache-Control": "no-store",
    "Pragma": "no-cache",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    # The page's own URL holds the token: never send it onwards.
    "Referrer-Policy": "no-referrer",
    "Content-Security-Policy": (
        f"default-src 'none'; style-src 'sha256-{_STYLE_HASH}'; "
        "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
}


def confirm_page(incident: Incident, step: int) -> str:
    """What opening the link shows: the incident and a button. Nothing is
    acknowledged until the button posts the form back to the same URL."""
    form = (
        '<form method="post">'
        f"<button type=submit>Acknowledge {escape(incident.ref)}</button></form>"
        '<p class="note">Acknowledging stops the escalation: nobody further on '
        "the ladder is paged while you work on it.</p>"
    )
    return _page(
        f"Acknowledge {incident.ref}?",
        _details(incident, step) + form,
    )


def acknowledged_page(incident: Incident, step: int) -> str:
    return _page(
        f"{incident.ref} acknowledged",
        f"<p>Thank you, {escape(incident.acked_by or '')}. The escalation has "
        "stopped; resolve the incident with the CLI or the API when it is over.</p>"
        + _details(incident, step),
    )


def already_handled_page(incident: Incident, step: int) -> str:
    """The incident was acknowledged or resolved before this link was used."""
    if incident.state is IncidentState.RESOLVED:
        text = (
            f"{incident.ref} was resolved at {_when(incident.resolved_at)}"
            f"{_by(incident.resolved_by)}; there is nothing to acknowledge."
        )
    else:
        text = (
            f"{incident.ref} was already acknowledged at {_when(incident.acked_at)}"
            f"{_by(incident.acked_by)}."
        )
    title = f"{incident.ref} already {incident.state.value}"
    return _page(title, _p(text) + _details(incident, step))


def refused_page(title: str, reason: str) -> str:
    """A link that cannot be used: says why, and nothing about any incident
    the link does not prove it may see."""
    return _page(title, _p(reason))


def _details(incident: Incident, step: int) -> str:
    rows = [
        ("Incident", incident.ref),
        ("Priority", incident.priority.value),
        ("Category", incident.category),
        ("Summary", incident.summary),
        ("State", incident.state.value),
        ("Opened", _when(incident.opened_at)),
        ("Ladder step", str(step + 1)),
    ]
    cells = "".join(f"<dt>{escape(k)}</dt><dd>{escape(v)}</dd>" for k, v in rows)
    return f"<dl>{cells}</dl>"


def _page(title: str, body: str) -> str:
    return (
        "<!doctype html><html lang=en><head><meta charset=utf-8>"
        '<meta name=viewport content="width=device-width,initial-scale=1">'
        '<meta name=robots content="noindex,nofollow">'
        f"<title>{escape(title)} - Sentinel</title><style>{_STYLE}</style></head>"
        f"<body><h1>{escape(title)}</h1>{body}</body></html>"
    )


def _p(text: str) -> str:
    return f"<p>{escape(text)}</p>"


def _when(at: float | None) -> str:
    if at is None:
        return "an unknown time"
    stamp = dt.datetime.fromtimestamp(at, dt.UTC)
    return stamp.strftime("%Y-%m-%d %H:%M UTC")


def _by(who: str | None) -> str:
    return f" by {who}" if who else ""
