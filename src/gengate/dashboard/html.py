"""HTML building blocks: escaping by default, tables, forms, the page shell and its inline stylesheet.

Every value reaches the page through `esc` (or `render`, which escapes each argument) unless it is `Html`, the type
of markup this package built itself. So a model name, a subject or a comment containing `<script>` shows as text.

Owns: markup helpers and the layout. Must not: query anything or know about sessions beyond what `Shell` carries.
"""

from __future__ import annotations

import html
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from urllib.parse import urlencode

from starlette.responses import HTMLResponse

CSS = """
:root{--fg:#1f2328;--muted:#59636e;--line:#d1d9e0;--bg:#fff;--soft:#f6f8fa;--accent:#0550ae;--bad:#b3261e;
--ok:#116329;--warn:#7d4e00}
*{box-sizing:border-box}body{font:15px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:var(--fg);
background:var(--bg);margin:0}
a{color:var(--accent)}a:focus-visible,button:focus-visible,input:focus-visible,select:focus-visible,
summary:focus-visible,iframe:focus-visible{outline:3px solid var(--accent);outline-offset:2px}
.skip{position:absolute;left:-999px}.skip:focus{left:8px;top:8px;background:#fff;padding:6px;z-index:2}
header{background:#24292f;color:#fff;padding:.5em 1.2em;display:flex;flex-wrap:wrap;align-items:center;gap:.3em 1em}
header .brand{font-weight:700;margin-right:1em}header nav ul{list-style:none;display:flex;flex-wrap:wrap;gap:.2em;
margin:0;padding:0}header nav a{color:#fff;text-decoration:none;padding:.25em .6em;border-radius:4px}
header nav a[aria-current=page]{background:#fff;color:#24292f;font-weight:600}
header nav a:hover{text-decoration:underline}
header .who{margin-left:auto;display:flex;gap:.6em;align-items:center}header .who button{background:none;
color:#fff;border:1px solid #fff;border-radius:4px;padding:.15em .6em;cursor:pointer}
main{max-width:1240px;margin:0 auto;padding:1em 1.2em 3em}h1{font-size:1.5em;margin:.3em 0 .6em}
h2{font-size:1.15em;margin:1.6em 0 .5em;border-bottom:1px solid var(--line);padding-bottom:.2em}
table{border-collapse:collapse;margin:.4em 0 1em;width:100%}caption{text-align:left;font-weight:600;padding:.3em 0}
th,td{border-bottom:1px solid var(--line);padding:.35em .6em;text-align:left;vertical-align:top}
th{background:var(--soft);font-weight:600}td.num,th.num{text-align:right;font-variant-numeric:tabular-nums}
.cards{display:grid;grid-template-columns:repeat(auto-fill,minmax(170px,1fr));gap:.8em;margin:.5em 0 1em}
.card{border:1px solid var(--line);border-radius:6px;padding:.6em .8em}.card .v{font-size:1.45em;font-weight:650}
.card .k{color:var(--muted);font-size:.9em}.muted{color:var(--muted)}.bad{color:var(--bad);font-weight:600}
.ok{color:var(--ok)}.warn{color:var(--warn);font-weight:600}
form.filters{display:flex;flex-wrap:wrap;gap:.6em 1em;align-items:flex-end;margin:.4em 0 1em}
form.filters label,form.stack label{display:flex;flex-direction:column;font-size:.9em;color:var(--muted)}
form.stack{display:grid;grid-template-columns:repeat(auto-fill,minmax(200px,1fr));gap:.6em 1em;align-items:end;
max-width:900px}
input,select,button{font:inherit;padding:.3em .5em;border:1px solid #8c959f;border-radius:4px;background:#fff;
color:var(--fg)}
button{background:var(--accent);color:#fff;border-color:var(--accent);cursor:pointer}button.danger{background:var(--bad);
border-color:var(--bad)}form.inline{display:inline}
.charts{display:grid;grid-template-columns:repeat(auto-fill,minmax(560px,1fr));gap:1em}
figure{margin:0;border:1px solid var(--line);border-radius:6px;padding:.5em}figcaption{font-weight:600}
svg text{font:11px system-ui,sans-serif;fill:#1f2328}.legend{display:flex;flex-wrap:wrap;gap:.2em 1em;font-size:.85em;
margin:.2em 0 0;padding:0;list-style:none}.legend span{display:inline-block;width:.8em;height:.8em;margin-right:.3em;
border-radius:2px;vertical-align:-1px}
dl.meta{display:grid;grid-template-columns:max-content 1fr;gap:.15em 1.2em;margin:.4em 0 1em}
dl.meta dt{color:var(--muted)}
dl.meta dd{margin:0}pre{white-space:pre-wrap;word-break:break-word;background:var(--soft);padding:.5em;margin:.3em 0}
.notice{border:1px solid var(--line);border-left:4px solid var(--accent);padding:.5em .8em;margin:.6em 0;
background:var(--soft)}
.notice.error{border-left-color:var(--bad)}.pager{display:flex;gap:1em;margin:.6em 0}
iframe.report{width:100%;height:80vh;border:1px solid var(--line);border-radius:6px}
code,.mono{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;font-size:.92em}
.login{max-width:520px;margin:3em auto}.login form{display:flex;flex-direction:column;gap:.6em}
.login label{display:flex;flex-direction:column;gap:.2em}
"""


class Html(str):
    """Markup built by this package: inserted as is, never escaped again."""

    __slots__ = ()


def esc(value: object) -> Html:
    """Escape a value for HTML text or a quoted attribute (Html passes through)."""
    if isinstance(value, Html):
        return value
    return Html(html.escape("" if value is None else str(value), quote=True))


def render(template: str, /, **values: object) -> Html:
    """`template.format(**values)` with every value escaped; the template itself is trusted markup."""
    return Html(template.format(**{k: esc(v) for k, v in values.items()}))


def join(parts: Iterable[object], sep: str = "") -> Html:
    """Concatenate escaped parts."""
    return Html(sep.join(esc(p) for p in parts))


def url(path: str, **params: object) -> str:
    """A path with the non-empty query parameters."""
    query = urlencode({k: str(v) for k, v in params.items() if v not in (None, "")})
    return f"{path}?{query}" if query else path


def link(href: str, text: object) -> Html:
    """An anchor."""
    return render('<a href="{href}">{text}</a>', href=href, text=text)


def ts(value: float | None) -> Html:
    """A UTC timestamp as a `<time>` element."""
    if value is None:
        return Html('<span class="muted">—</span>')
    moment = datetime.fromtimestamp(float(value), UTC)
    return render(
        '<time datetime="{iso}">{text}</time>', iso=moment.isoformat(), text=moment.strftime("%Y-%m-%d %H:%M:%S")
    )


def usd(value: float | None) -> str:
    """Dollars with enough digits for small amounts."""
    if value is None:
        return "—"
    return f"${value:,.2f}" if abs(value) >= 100 else f"${value:,.4f}"


def num(value: float | None, digits: int = 0) -> str:
    """A number with thousands separators."""
    return "—" if value is None else f"{value:,.{digits}f}"


def pct(part: float, whole: float) -> str:
    """A share as a percentage (— when there is no whole)."""
    return "—" if not whole else f"{100 * part / whole:.1f}%"


def table(
    headers: Sequence[str], rows: Iterable[Sequence[object]], *, caption: str | None = None,
    numeric: Sequence[int] = (), empty: str = "Nothing to show.",
) -> Html:  # fmt: skip
    """A semantic table: caption, column headers with scope, right-aligned numeric columns."""
    nums = set(numeric)
    head = join(
        render('<th scope="col"' + (' class="num"' if i in nums else "") + ">{h}</th>", h=h)
        for i, h in enumerate(headers)
    )
    body = []
    for row in rows:
        cells = join(
            render("<td" + (' class="num"' if i in nums else "") + ">{c}</td>", c=c) for i, c in enumerate(row)
        )
        body.append(Html(f"<tr>{cells}</tr>"))
    if not body:
        body.append(render('<tr><td colspan="{n}" class="muted">{text}</td></tr>', n=len(headers), text=empty))
    cap = render("<caption>{c}</caption>", c=caption) if caption else ""
    return Html(f"<table>{cap}<thead><tr>{head}</tr></thead><tbody>{join(body)}</tbody></table>")


def cards(items: Iterable[tuple[str, object]]) -> Html:
    """A row of headline figures."""
    inner = join(render('<div class="card"><div class="k">{k}</div><div class="v">{v}</div></div>', k=k, v=v)
                 for k, v in items)  # fmt: skip
    return Html(f'<div class="cards">{inner}</div>')


def meta(items: Iterable[tuple[str, object]]) -> Html:
    """A definition list of labelled values."""
    return Html('<dl class="meta">' + join(render("<dt>{k}</dt><dd>{v}</dd>", k=k, v=v) for k, v in items) + "</dl>")


def hidden_csrf(token: str) -> Html:
    """The CSRF field every state-changing form carries."""
    return render('<input type="hidden" name="csrf" value="{t}">', t=token)


def notice(text: object, *, error: bool = False) -> Html:
    """A highlighted message (an error is announced to screen readers)."""
    role = ' role="alert"' if error else ' role="status"'
    return render('<p class="notice' + (" error" if error else "") + '"' + role + ">{t}</p>", t=text)


@dataclass(frozen=True, slots=True)
class Shell:
    """What the page frame needs: where it is mounted, who is looking and which pages they may open."""

    prefix: str
    who: str
    csrf: str
    pages: Sequence[tuple[str, str]]  # (path below the prefix, label)


def page(title: str, body: Html, shell: Shell | None, *, active: str = "", status: int = 200) -> HTMLResponse:
    """A complete page: skip link, navigation, the logout form, and the content in `<main>`."""
    nav = ""
    who = ""
    if shell is not None:
        items = []
        for path, label in shell.pages:
            current = ' aria-current="page"' if path == active else ""
            items.append(
                render('<li><a href="{href}"' + current + ">{label}</a></li>", href=shell.prefix + path, label=label)
            )
        nav = Html(f'<nav aria-label="Dashboard"><ul>{join(items)}</ul></nav>')
        who = render(
            '<div class="who"><span>{who}</span><form class="inline" method="post" action="{prefix}/logout">{csrf}'
            '<button type="submit">Log out</button></form></div>',
            who=shell.who, prefix=shell.prefix, csrf=hidden_csrf(shell.csrf),
        )  # fmt: skip
    document = render(
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1"><title>{title} · gengate</title>'
        "<style>{css}</style></head><body>"
        '<a class="skip" href="#main">Skip to content</a>'
        '<header><span class="brand">gengate</span>{nav}{who}</header>'
        '<main id="main" tabindex="-1"><h1>{title}</h1>{body}'
        '<p class="muted"><small>Rendered {now} UTC</small></p></main></body></html>',
        title=title, css=Html(CSS), nav=Html(nav), who=Html(who), body=body,
        now=datetime.fromtimestamp(time.time(), UTC).strftime("%Y-%m-%d %H:%M:%S"),
    )  # fmt: skip
    return HTMLResponse(document, status_code=status)
