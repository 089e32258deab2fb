"""HTML pieces of the report: embedded images, lists and tables (escaped)."""

from __future__ import annotations

import base64
import html

import polars as pl


def img(png: bytes, alt: str) -> str:
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{base64.b64encode(png).decode()}">'


def bullets(items: list[str]) -> str:
    return "<ul>" + "".join(f"<li>{html.escape(i)}</li>" for i in items) + "</ul>"


def table(frame: pl.DataFrame) -> str:
    """An HTML table; floats shown with 4 significant digits (the Parquet tables keep full precision)."""
    head = "".join(f"<th>{html.escape(c)}</th>" for c in frame.columns)
    rows = "".join(
        "<tr>" + "".join(f"<td>{'—' if v is None else html.escape(cell(v))}</td>" for v in row) + "</tr>"
        for row in frame.iter_rows()
    )
    return f"<table><tr>{head}</tr>{rows}</table>"


def cell(value: object) -> str:
    """How a table shows a value: floats to 4 significant digits (0.005121855 -> 0.005122), the rest as written."""
    return f"{value:.4g}" if isinstance(value, float) else str(value)
