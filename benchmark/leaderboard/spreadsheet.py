"""CSV cells that a spreadsheet opens as text, never as a formula.

Excel, LibreOffice and Google Sheets evaluate a CSV cell that begins with ``=``, ``+``, ``-``, ``@``, a tab or a
carriage return as a formula (``=HYPERLINK(...)``, ``=cmd|...``: "CSV injection"). A record's method name, backbone
or error text is whatever the file says, so every text cell that begins so is written with a leading apostrophe,
the neutralisation OWASP recommends (a spreadsheet shows the text as it is). Numbers (``-0.5``) are left alone.
(Hand-written: neither pandas nor the csv module offers it.)
"""

from __future__ import annotations

from typing import Any

import pandas as pd

FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def inert_cell(value: Any) -> Any:
    """``value``, with a leading apostrophe where a spreadsheet would read it as a formula."""
    if not isinstance(value, str) or not value.startswith(FORMULA_STARTS):
        return value
    try:
        float(value)
        return value  # a number written as text ("-0.5"), not a formula
    except ValueError:
        return "'" + value


def spreadsheet_safe(frame: pd.DataFrame) -> pd.DataFrame:
    """A copy of ``frame`` whose text cells are all inert (see :func:`inert_cell`)."""
    out = frame.copy()
    for column in out.columns:
        if not pd.api.types.is_numeric_dtype(out[column]):  # object or pandas' string dtype
            out[column] = out[column].map(inert_cell)
    return out
