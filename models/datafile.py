"""Loading a user's data file: a CSV with named covariate columns and a response column."""

from __future__ import annotations

import csv
import hashlib
import io
from pathlib import Path

import numpy as np
import pandas as pd

from models.data import Dataset
from models.errors import MixbenchError


def read_data_bytes(path: str | Path) -> bytes:
    """The bytes of a data file.

    Parameters
    ----------
    path : str or Path

    Returns
    -------
    bytes

    Raises
    ------
    MixbenchError
        One line: the path is a directory, missing, or cannot be read.
    """
    path = Path(path)
    if path.is_dir():
        raise MixbenchError(f"data file {path}: is a directory, not a CSV file")
    if not path.is_file():
        raise MixbenchError(f"data file {path}: not found")
    try:
        return path.read_bytes()
    except OSError as exc:
        raise MixbenchError(f"data file {path}: cannot be read ({exc.strerror or exc})") from None


def data_digest(path: str | Path) -> str:
    """A short SHA-256 of a data file's bytes: part of a cell's identity, so that edited data is
    a new cell (and rows fitted to the old content are not taken for it).

    Returns
    -------
    str
        The first 16 hexadecimal digits of the SHA-256 of the file's bytes.

    Raises
    ------
    MixbenchError
        The file is missing or cannot be read (``read_data_bytes``).
    """
    return hashlib.sha256(read_data_bytes(path)).hexdigest()[:16]


def load_csv(path: str | Path, covariates: list[str] | None = None, response: str = "y") -> Dataset:
    """Read ``path`` into a Dataset (no truth).

    Parameters
    ----------
    path : str or Path
        A UTF-8 CSV file with a header row.
    covariates : list of str, optional
        The x columns, in order; by default every column but the response. An empty list means
        no covariates (an intercept-only mixture).
    response : str
        The y column.

    Returns
    -------
    Dataset
        x of shape (N, D), y of shape (N,), ``covariates`` the column names.

    Raises
    ------
    MixbenchError
        One line naming the file and the problem: unreadable, not UTF-8, malformed CSV (a row
        with more or fewer fields than the header), empty, a missing or repeated column (in the
        file or in ``covariates``), a value
        that is not a finite number.
    """
    path = Path(path)
    try:
        text = read_data_bytes(path).decode("utf-8")
    except UnicodeDecodeError:
        raise MixbenchError(f"data file {path}: malformed CSV (not UTF-8 text)") from None
    try:
        rows = [row for row in csv.reader(io.StringIO(text), strict=True) if row]
    except csv.Error as exc:
        raise MixbenchError(f"data file {path}: malformed CSV ({exc})") from None
    if not rows:
        raise MixbenchError(f"data file {path}: is empty")
    header = rows[0]
    for line, row in enumerate(rows[1:], start=2):
        # pandas would silently turn extra fields into an index or pad short rows with NaN.
        if len(row) != len(header):
            raise MixbenchError(
                f"data file {path}: malformed CSV (data row {line - 1} has {len(row)} fields, "
                f"the header has {len(header)})"
            )
    if len(set(header)) != len(header):
        raise MixbenchError(f"data file {path}: malformed CSV (duplicate column names in the header)")
    try:
        frame = pd.read_csv(io.StringIO(text), index_col=False)
    except pd.errors.ParserError as exc:
        first = str(exc).strip().splitlines()[0]
        raise MixbenchError(f"data file {path}: malformed CSV ({first})") from None
    if frame.empty:
        raise MixbenchError(f"data file {path}: has a header but no rows")
    columns = [str(c) for c in frame.columns]
    if response not in columns:
        raise MixbenchError(
            f"data file {path}: no response column {response!r} (columns: {', '.join(columns)})"
        )
    if covariates is None:
        covariates = [c for c in columns if c != response]
    missing = [c for c in covariates if c not in columns]
    if missing:
        raise MixbenchError(f"data file {path}: missing covariate column(s) {', '.join(missing)}")
    repeated = sorted({c for c in covariates if covariates.count(c) > 1})
    if repeated:
        # Two identical columns make their slopes unidentifiable (only their sum is).
        raise MixbenchError(f"data file {path}: covariate column(s) {', '.join(repeated)} given more than once")
    if response in covariates:
        raise MixbenchError(f"data file {path}: column {response!r} is both response and covariate")
    selected = [*covariates, response]
    values = {}
    for column in selected:
        numeric = pd.to_numeric(frame[column], errors="coerce")
        bad = numeric.isna() & frame[column].notna()
        if bad.any():
            row = int(np.flatnonzero(bad.to_numpy())[0])
            raise MixbenchError(
                f"data file {path}: column {column!r} has a non-numeric value "
                f"{frame[column].iloc[row]!r} at data row {row + 1}"
            )
        arr = numeric.to_numpy(dtype=float)
        if np.isnan(arr).any():
            row = int(np.flatnonzero(np.isnan(arr))[0])
            raise MixbenchError(f"data file {path}: column {column!r} has a missing/NaN value at data row {row + 1}")
        if np.isinf(arr).any():
            row = int(np.flatnonzero(np.isinf(arr))[0])
            raise MixbenchError(f"data file {path}: column {column!r} has an infinite value at data row {row + 1}")
        values[column] = arr
    x = np.column_stack([values[c] for c in covariates]) if covariates else np.zeros((len(frame), 0))
    return Dataset(x=x, y=values[response], truth=None, name=path.stem, covariates=tuple(covariates))
