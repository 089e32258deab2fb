"""The static HTML report: one self-contained file (images embedded, no network), sections only where data exists.

Reads the store (Polars) and draws with matplotlib; never computes statistics of its own beyond summaries.
"""

from __future__ import annotations

import html
from datetime import UTC, datetime
from pathlib import Path

from yolo_audit.errors import AuditError
from yolo_audit.results.store import tables

CSS = """
body{font-family:system-ui,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;color:#222}
h1{font-size:1.6em}h2{border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:1.6em}
table{border-collapse:collapse;font-size:.85em}td,th{border:1px solid #ddd;padding:.25em .5em;text-align:left}
th{background:#f3f3f3}img{max-width:100%;display:block;margin:.5em 0}.note{color:#666;font-size:.85em}
li{margin:.3em 0}
"""
SCRIPT = """window.addEventListener('load',()=>{const ok=[...document.images].filter(i=>i.complete&&i.naturalWidth>0);
document.body.dataset.imagesLoaded=ok.length;document.body.dataset.sections=document.querySelectorAll('section').length;});"""


def write_report(results: str | Path, out: str | Path) -> Path:
    """Write the report for a results folder; return its path."""
    # matplotlib loads here, not when the terminal printers import this package (~1 s of every command)
    from yolo_audit.report.explanations import explained
    from yolo_audit.report.findings import Context, findings
    from yolo_audit.report.markup import bullets
    from yolo_audit.report.sections import SECTIONS

    target = Path(out)
    if target.is_dir() or str(out).endswith("/"):
        raise AuditError("is a folder; pass the report's file name, e.g. --out report.html", path=str(out))
    present = tables(results)
    if not present:
        raise AuditError("no results tables here; run `yolo-audit demo`, `weights` or `study` first", path=str(results))
    ctx = Context.load(results, present)
    sections = [("summary", "Findings", bullets(findings(ctx) + explained(ctx)))]
    sections += [(sid, title, draw(ctx)) for table, sid, title, draw in SECTIONS if table in present]
    body = "\n".join(
        f'<section id="{sid}"><h2>{html.escape(title)}</h2>\n{content}</section>' for sid, title, content in sections
    )
    page = (
        f'<!doctype html><html><head><meta charset="utf-8"><link rel="icon" href="data:,">'
        f"<title>yolo-audit report</title><style>{CSS}</style></head><body>"
        f"<h1>yolo-audit report</h1><p class=note>Results: {html.escape(str(results))} · generated "
        f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC · tables: {', '.join(present)}</p>\n{body}"
        f"<script>{SCRIPT}</script></body></html>"
    )
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(page)
    except OSError as exc:
        raise AuditError(
            f"cannot write the report ({exc.strerror or exc}); pass a writable --out", path=str(out)
        ) from exc
    return target
