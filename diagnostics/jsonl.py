"""Append-only, crash-safe JSONL files: one JSON object per line.

Used for the training callback's `shift_probe.jsonl` (one record per probe evaluation) and for
probe sets. The guarantees:

- **atomic append**: a record is one `write()` of `json + "\\n"`, then `flush()` and `os.fsync()`,
  so after a crash the file holds whole records plus, at worst, one torn last line;
- **torn tail tolerated**: `read_jsonl` ignores a last line that does not parse (counting it in the
  log); `append_jsonl` first cuts such a tail off, so a new record never glues onto garbage;
- **resume-safe rewrites**: `rewrite_jsonl` writes a temporary file in the same directory, fsyncs it
  and `os.replace`s it over the old one, so readers see either the old or the new file.

A line in the *middle* of a file that does not parse is not a torn write; it is reported as an
error naming the file and line number.
"""

from __future__ import annotations

import json
import logging
import math
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)


def to_jsonable(obj: Any) -> Any:
    """Recursively turn numpy / torch scalars and arrays, tuples and paths into plain JSON types.

    Non-finite floats become `None` (JSON has no NaN/inf; `json.dumps` would write invalid JSON).
    """
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "tolist") and not isinstance(obj, (str, bytes)):  # numpy/torch arrays and scalars
        return to_jsonable(obj.tolist())
    if isinstance(obj, bool) or obj is None or isinstance(obj, (int, str)):
        return obj
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if hasattr(obj, "item"):
        return to_jsonable(obj.item())
    raise TypeError(f"cannot write a {type(obj).__name__} to JSON: {obj!r}")


def _dumps(record: dict) -> str:
    line = json.dumps(to_jsonable(record), ensure_ascii=False, allow_nan=False)
    if "\n" in line:  # impossible with json.dumps defaults, but the format depends on it
        raise ValueError("a JSONL record must serialise to a single line")
    return line


def _cut_torn_tail(path: Path) -> int:
    """Truncate a last line that has no trailing newline (a torn write). Returns bytes removed."""
    size = path.stat().st_size
    if size == 0:
        return 0
    with open(path, "rb+") as fh:
        fh.seek(-1, os.SEEK_END)
        if fh.read(1) == b"\n":
            return 0
        # walk back to the previous newline (records are small; read the tail in blocks)
        pos, block = size, 4096
        while pos > 0:
            start = max(0, pos - block)
            fh.seek(start)
            chunk = fh.read(pos - start)
            nl = chunk.rfind(b"\n")
            if nl >= 0:
                keep = start + nl + 1
                break
            pos = start
        else:
            keep = 0
        fh.truncate(keep)
        fh.flush()
        os.fsync(fh.fileno())
    logger.warning("%s: removed a torn last line (%d bytes) before appending", path, size - keep)
    return size - keep


def append_jsonl(path: str | os.PathLike, record: dict) -> None:
    """Append one record as one line; durable when this returns (write + flush + fsync)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    line = _dumps(record) + "\n"
    if path.exists():
        _cut_torn_tail(path)
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(line)
        fh.flush()
        os.fsync(fh.fileno())


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    """All complete records of `path` (missing file -> []). A torn last line is skipped and logged."""
    path = Path(path)
    if not path.exists():
        return []
    with open(path, encoding="utf-8") as fh:
        lines = fh.read().split("\n")
    # text ends with "\n" when the last record is complete -> the final element is ""
    records: list[dict] = []
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        is_last = i == len(lines) - 1  # no newline after it: possibly torn
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as err:
            if is_last:
                logger.warning("%s: ignoring a torn last line (%d chars)", path, len(line))
                continue
            raise ValueError(f"{path}: line {i + 1} is not valid JSON ({err.msg}). "
                             f"Fix: repair or remove that line") from None
        if not isinstance(rec, dict):
            raise ValueError(f"{path}: line {i + 1} is a {type(rec).__name__}, expected a JSON object")
        records.append(rec)
    return records


def _write_atomic(path: str | os.PathLike, text: str) -> None:
    """Replace `path` with `text` atomically: temp file in the same directory + fsync + os.replace."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def rewrite_jsonl(path: str | os.PathLike, records: Iterable[dict]) -> None:
    """Atomically replace `path` with `records`, one JSON object per line."""
    _write_atomic(path, "".join(_dumps(rec) + "\n" for rec in records))


def write_json_atomic(path: str | os.PathLike, obj: Any, indent: int | None = 2) -> None:
    """Write one JSON document atomically."""
    _write_atomic(path, json.dumps(to_jsonable(obj), indent=indent, ensure_ascii=False, allow_nan=False) + "\n")
