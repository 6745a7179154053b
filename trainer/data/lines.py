"""Records of a text file as its format defines them, not as str.splitlines() cuts them.

JSON Lines separates values by "\n" only (read_text turns "\r\n" into it), and a JSON string
may hold U+2028, U+2029 or U+0085 unescaped, where splitlines() would cut a valid record in two.
A CSV row is the csv module's: a quoted field may hold a newline. A UTF-8 byte-order mark (as
Windows tools write) is not part of the first record.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Iterator


def read_text(path: Path) -> str:
    """The file as text, without a byte-order mark, "\r\n" read as "\n"; undecodable bytes are
    replaced (callers that care check the bytes first, trainer.data.text.not_text)."""
    return path.read_text(encoding="utf-8-sig", errors="replace")


def json_lines(text: str) -> Iterator[tuple[int, str]]:
    """(line number, line) for each line of a JSON Lines text that is not blank."""
    for n, line in enumerate(text.split("\n"), 1):
        if line.strip():
            yield n, line


def csv_rows(text: str) -> Iterator[tuple[int, dict[str, str]]]:
    """(line number, row) for each row of a CSV text with a header line."""
    reader = csv.DictReader(io.StringIO(text, newline=""))
    for row in reader:
        yield reader.line_num, row
