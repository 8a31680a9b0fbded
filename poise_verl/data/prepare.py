"""Convert a published math dataset file to the parquet verl's RLHFDataset reads.

    python -m poise_verl.data.prepare NAME --input FILE [FILE ...] --output OUT.parquet [--limit N] [--skip-bad]

NAME: dapo_math_17k (training) or aime24, aime25, amc, math500 (validation). FILE is the dataset as its hub
page publishes it (.parquet, .jsonl or .json; see `sources.py` for the columns read). Several files are
concatenated (AIME 2025 is published as aime2025-I.jsonl and aime2025-II.jsonl).

Each output row: `data_source` (what the scorer dispatches on), `prompt` (one user message: the problem and
POISE's \\boxed{} instruction), `ability` "math", `reward_model` {"style": "rule", "ground_truth"}, and
`extra_info` {"split", "index", "source_id", "question", "metadata"}. Every dataset writes the same schema
(`VERL_SCHEMA`), so verl can concatenate several validation files into one dataset.

Repeated problems are written once, the first copy kept (DAPO-Math-17k repeats each problem ~100 times).
A row with a blank problem or a missing answer stops the conversion with its file and row, unless
--skip-bad, which drops such rows and prints how many.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from poise_verl.data.sources import (
    BOXED_INSTRUCTION,
    DATASETS,
    Column,
    DatasetSpec,
    asks_for_answer_line,
    clean_answer,
    clean_problem,
)

VERL_SCHEMA = pa.schema(
    [
        ("data_source", pa.string()),
        ("prompt", pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())]))),
        ("ability", pa.string()),
        ("reward_model", pa.struct([("style", pa.string()), ("ground_truth", pa.string())])),
        (
            "extra_info",
            pa.struct(
                [
                    ("split", pa.string()),
                    # Position in this file; verl's RLHFDataset copies it to the row's `index`.
                    ("index", pa.int64()),
                    ("source_id", pa.string()),
                    ("question", pa.string()),
                    # Dataset-specific columns (MATH-500 subject and level, ...) as JSON, so that every
                    # dataset shares one schema.
                    ("metadata", pa.string()),
                ]
            ),
        ),
    ]
)

# Rows per parquet read; also how often progress is printed for jsonl files.
_BATCH_ROWS = 65_536


class DataError(ValueError):
    """A dataset file that cannot be converted; the message names the file (and row)."""


@dataclass
class Record:
    """One source row: its 0-based position in its file, its line for jsonl files, and its values."""

    path: Path
    row: int
    line: int | None
    values: dict[str, Any]

    def where(self) -> str:
        line = f" (line {self.line})" if self.line is not None else ""
        return f"{self.path}: row {self.row}{line}"


@dataclass
class Report:
    """What a conversion did, printed at the end."""

    rows_read: int = 0
    duplicates: int = 0
    # Duplicates whose answer differs from the kept copy's.
    conflicting_duplicates: int = 0
    bad_rows: int = 0
    # Problems that still ask for DAPO's `Answer:` line: their prompts would ask for two answer formats.
    still_wrapped: int = 0
    stopped_at_limit: bool = False
    bad_examples: list[str] = field(default_factory=list)


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _column_names(path: Path) -> tuple[list[str], int | None]:
    """The columns of a file and its row count when cheaply known (parquet metadata)."""
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        try:
            parquet = pq.ParquetFile(path)
        except (OSError, pa.ArrowException) as error:
            raise DataError(f"{path}: not a readable parquet file: {error}") from error
        return list(parquet.schema_arrow.names), parquet.metadata.num_rows
    first = next(_json_records(path), None)
    return (list(first.values) if first is not None else []), None


def _json_records(path: Path) -> Iterator[Record]:
    suffix = path.suffix.lower()
    if suffix not in {".jsonl", ".json"}:
        raise DataError(f"{path}: unsupported file type {path.suffix!r}; expected .parquet, .jsonl or .json")
    with path.open("rb") as handle:
        is_array = suffix == ".json" and handle.read(1024).lstrip().startswith(b"[")
    if is_array:
        # A .json file holds one JSON array of objects or, despite its name, JSON lines.
        try:
            items = json.loads(path.read_bytes().decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            raise DataError(f"{path}: not valid JSON: {error}") from error
        for row, item in enumerate(items):
            if not isinstance(item, dict):
                raise DataError(f"{path}: row {row}: expected a JSON object, found {type(item).__name__}")
            yield Record(path, row, None, item)
        return
    row = 0
    with path.open("rb") as handle:
        for line_number, raw_line in enumerate(handle, start=1):
            where = f"{path}: row {row} (line {line_number})"
            try:
                line = raw_line.decode("utf-8")
                if not line.strip():
                    continue
                item = json.loads(line)
            except (UnicodeDecodeError, json.JSONDecodeError) as error:
                raise DataError(f"{where}: not valid JSON: {error}") from error
            if not isinstance(item, dict):
                raise DataError(f"{where}: expected a JSON object, found {type(item).__name__}")
            yield Record(path, row, line_number, item)
            row += 1
            if row % _BATCH_ROWS == 0:
                _log(f"{path}: {row:,} rows read")


def _parquet_records(path: Path, columns: list[str], total: int) -> Iterator[Record]:
    parquet = pq.ParquetFile(path)
    row = 0
    for batch in parquet.iter_batches(batch_size=_BATCH_ROWS, columns=columns):
        for values in batch.to_pylist():
            yield Record(path, row, None, values)
            row += 1
        if total > _BATCH_ROWS:
            _log(f"{path}: {row:,} / {total:,} rows read")


def _resolve(path: Path, found: list[str], field_name: str, candidates: tuple[Column, ...]) -> Column | None:
    for candidate in candidates:
        if candidate.name in found:
            return candidate
    if field_name == "source_id":
        return None
    expected = ", ".join(c.name for c in candidates)
    raise DataError(
        f"{path}: no column for the {field_name}; expected one of [{expected}], found [{', '.join(found)}]"
    )


def _records(spec: DatasetSpec, path: Path) -> tuple[dict[str, Column | None], list[str], Iterator[Record]]:
    """The columns chosen for each field, the metadata columns present, and the file's records."""
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    found, total = _column_names(path)
    chosen = {
        "problem": _resolve(path, found, "problem", spec.problem),
        "answer": _resolve(path, found, "answer", spec.answer),
        "source_id": _resolve(path, found, "source_id", spec.source_id),
    }
    metadata = [name for name in spec.metadata if name in found]
    if path.suffix.lower() == ".parquet":
        needed = sorted({c.name for c in chosen.values() if c is not None} | set(metadata))
        _log(f"{path}: {total:,} rows")
        return chosen, metadata, _parquet_records(path, needed, total)
    return chosen, metadata, _json_records(path)


def _read(column: Column | None, record: Record) -> Any:
    if column is None:
        return None
    return column.read(record.values.get(column.name))


def verl_row(
    spec: DatasetSpec, problem: str, answer: str, index: int, source_id: str, metadata: dict[str, Any]
) -> dict[str, Any]:
    """One row of VERL_SCHEMA."""
    return {
        "data_source": spec.data_source,
        "prompt": [{"role": "user", "content": f"{problem} {BOXED_INSTRUCTION}"}],
        "ability": "math",
        "reward_model": {"style": "rule", "ground_truth": answer},
        "extra_info": {
            "split": spec.split,
            "index": index,
            "source_id": source_id,
            "question": problem,
            "metadata": json.dumps(metadata, ensure_ascii=False, sort_keys=True, default=str),
        },
    }


def convert(
    spec: DatasetSpec, inputs: list[Path], limit: int | None = None, skip_bad: bool = False
) -> tuple[list[dict[str, Any]], Report]:
    """The verl rows of `inputs`, deduplicated by problem text, and what was done to get them."""
    rows: list[dict[str, Any]] = []
    answer_of_problem: dict[str, str] = {}
    report = Report()
    for path in inputs:
        chosen, metadata_columns, records = _records(spec, path)
        for record in records:
            report.rows_read += 1
            problem = clean_problem(_read(chosen["problem"], record))
            answer = clean_answer(_read(chosen["answer"], record))
            if problem is None or answer is None:
                missing = "problem is missing or blank" if problem is None else "answer is missing"
                message = f"{record.where()}: {missing}"
                if not skip_bad:
                    raise DataError(f"{message} (use --skip-bad to drop such rows)")
                report.bad_rows += 1
                if len(report.bad_examples) < 5:
                    report.bad_examples.append(message)
                continue
            if problem in answer_of_problem:
                report.duplicates += 1
                report.conflicting_duplicates += answer_of_problem[problem] != answer
                continue
            answer_of_problem[problem] = answer
            report.still_wrapped += asks_for_answer_line(problem)
            source_id = _read(chosen["source_id"], record)
            source_id = str(source_id) if source_id is not None else f"{path.name}:{record.row}"
            metadata = {name: record.values.get(name) for name in metadata_columns}
            rows.append(verl_row(spec, problem, answer, len(rows), source_id, metadata))
            if limit is not None and len(rows) >= limit:
                report.stopped_at_limit = True
                return rows, report
    return rows, report


def write_parquet(rows: list[dict[str, Any]], output: Path) -> None:
    """Write rows with VERL_SCHEMA, atomically (a crash leaves no half-written file)."""
    output.parent.mkdir(parents=True, exist_ok=True)
    table = pa.Table.from_pylist(rows, schema=VERL_SCHEMA)
    temporary = output.with_name(f".{output.name}.{os.getpid()}.tmp")
    try:
        pq.write_table(table, temporary)
        os.replace(temporary, output)
    finally:
        temporary.unlink(missing_ok=True)


def _summary(spec: DatasetSpec, report: Report, written: int, output: Path) -> str:
    lines = [f"{spec.name}: {report.rows_read:,} rows read"]
    if report.duplicates:
        lines.append(
            f"  {report.duplicates:,} repeats of an earlier problem dropped"
            f" ({report.conflicting_duplicates:,} of them with a different answer; the first answer kept)"
        )
    if report.bad_rows:
        lines.append(f"  bad rows dropped (--skip-bad): {report.bad_rows:,}, e.g.:")
        lines.extend(f"    {example}" for example in report.bad_examples)
    if report.still_wrapped:
        lines.append(
            f"  warning: {report.still_wrapped:,} problems still ask for an `Answer:` line (an unrecognised DAPO"
            " wrapper); their prompts ask for two answer formats"
        )
    if report.stopped_at_limit:
        lines.append(f"  stopped at --limit {written:,}")
    lines.append(f"  {written:,} rows written to {output} (data_source={spec.data_source!r})")
    return "\n".join(lines)


def _parser() -> argparse.ArgumentParser:
    names = "\n".join(f"  {spec.name:<14} {', '.join(spec.hub_ids)}" for spec in DATASETS.values())
    parser = argparse.ArgumentParser(
        prog="python -m poise_verl.data.prepare",
        description="Convert a published math dataset file to verl's RL parquet.",
        epilog=f"datasets and the hub pages whose formats they read:\n{names}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("name", choices=sorted(DATASETS), help="which dataset the input files hold")
    parser.add_argument(
        "--input", nargs="+", required=True, type=Path, help="the dataset file(s): .parquet, .jsonl or .json"
    )
    parser.add_argument("--output", required=True, type=Path, help="the verl parquet to write")
    parser.add_argument("--limit", type=int, default=None, help="write at most N rows (the first N problems)")
    parser.add_argument(
        "--skip-bad", action="store_true", help="drop rows with a blank problem or missing answer (counted)"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.limit is not None and args.limit < 1:
        _parser().error("--limit must be at least 1")
    spec = DATASETS[args.name]
    try:
        rows, report = convert(spec, args.input, limit=args.limit, skip_bad=args.skip_bad)
        if not rows:
            raise DataError(f"{', '.join(map(str, args.input))}: no usable rows")
        write_parquet(rows, args.output)
    except DataError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(_summary(spec, report, len(rows), args.output))
    return 0


if __name__ == "__main__":
    sys.exit(main())
