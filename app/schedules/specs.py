"""What a schedule is made of, as callers write it: the body of ``/v1/schedules``.

Shapes are checked here (pydantic); what needs the world (does the model exist, may the path be
read, does the query run) is checked by ``app.schedules.service``.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

IDENTIFIER = r"^[A-Za-z_][A-Za-z0-9_]{0,62}(\.[A-Za-z_][A-Za-z0-9_]{0,62})?$"
CONNECTION = r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}$"
FileFormat = Literal["jsonl", "csv", "parquet"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class _Database(_Strict):
    """Which database: a connection an operator registered, or (API keys off) a URL."""

    connection: str | None = Field(None, pattern=CONNECTION)
    """The name of a connection registered for the tenant (``INFERQ_DATA_CONNECTIONS``)."""
    url: str | None = Field(None, max_length=1000)
    """SQLAlchemy URL; accepted only with API keys off (one trusted tenant)."""

    @model_validator(mode="after")
    def _one_of(self) -> _Database:
        if self.connection is not None and self.url is not None:
            raise ValueError("give connection or url, not both")
        return self


class FileSource(_Strict):
    """Files matching a path or glob: JSONL, CSV or Parquet (one format per source)."""

    type: Literal["file"]
    path: str = Field(min_length=1, max_length=1000)
    """A file or a glob (``/data/in/*.jsonl``); relative paths are under the first source root."""
    format: FileFormat | None = None
    """Taken from the file extension when left out."""
    watch: bool = False
    """Start a run for every new file that matches (each file once), besides any cron."""


class SqlSource(_Database):
    """Rows of a SQL query; with a watermark, only the rows added since the last run.

    With API keys off and neither ``connection`` nor ``url``, inferq's own database."""

    type: Literal["sql"]
    query: str = Field(min_length=1, max_length=20_000)
    """A SELECT; ``custom_id`` names a row, the other columns are the model input. With a
    watermark it filters on ``:watermark`` and returns the watermark column."""
    watermark_column: str | None = Field(None, pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")
    """The result column whose highest value read is the next run's ``:watermark``."""
    initial_watermark: str | int | float | None = None
    """``:watermark`` of the first run; default: below every value (the first run reads all)."""


class TableSink(_Database):
    """Results written to a table (created if missing): job_id, job_index, custom_id, status,
    output, error. With API keys off and neither ``connection`` nor ``url``, a table in
    inferq's own database (never one of inferq's tables)."""

    type: Literal["table"]
    table: str = Field(pattern=IDENTIFIER)


class FileSink(_Strict):
    """Results written to a JSONL file, one line per input in input order.

    ``{job_id}``, ``{run_id}``, ``{schedule_id}`` and ``{date}`` in the path are filled in."""

    type: Literal["file"]
    path: str = Field(min_length=1, max_length=1000)


Source = Annotated[FileSource | SqlSource, Field(discriminator="type")]
Sink = Annotated[TableSink | FileSink, Field(discriminator="type")]


class ScheduleCreate(_Strict):
    """``POST /v1/schedules``."""

    name: str = Field(min_length=1, max_length=200)
    cron: str | None = Field(None, max_length=200)
    """Five-field cron expression; may be left out only by a schedule that watches for files."""
    timezone: str = Field("UTC", max_length=64)
    model: str = Field(min_length=1, max_length=100)
    model_version: str | None = Field(None, max_length=50)
    source: Source
    sink: Sink | None = None
    enabled: bool = True
    callback_url: str | None = Field(None, max_length=2000)


class ScheduleUpdate(_Strict):
    """``PATCH /v1/schedules/{id}``: the fields given replace the stored ones."""

    name: str | None = Field(None, min_length=1, max_length=200)
    cron: str | None = Field(None, max_length=200)
    timezone: str | None = Field(None, max_length=64)
    model: str | None = Field(None, min_length=1, max_length=100)
    model_version: str | None = Field(None, max_length=50)
    source: Source | None = None
    sink: Sink | None = None
    enabled: bool | None = None
    callback_url: str | None = Field(None, max_length=2000)

    def changes(self) -> dict[str, Any]:
        """The fields the caller sent (an explicit null clears an optional field)."""
        return {k: getattr(self, k) for k in self.model_fields_set}


def dump(spec: BaseModel | None) -> dict[str, Any] | None:
    """A spec as stored: JSON, without fields left at None."""
    return None if spec is None else spec.model_dump(mode="json", exclude_none=True)
