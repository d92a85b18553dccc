"""``inferq schedules …``: manage schedules through the HTTP API (``--api-url``, ``--api-key``),
with ``app.client``."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Annotated, Any, NoReturn

import httpx
import typer

from app.client import ApiError, Client

schedules_cli = typer.Typer(
    help="Schedules: cron or file-triggered batch jobs.", no_args_is_help=True
)

FINAL_RUN = {"submitted", "skipped", "failed"}


@dataclass
class Api:
    url: str
    key: str | None


@contextmanager
def _client(ctx: typer.Context) -> Iterator[Client]:
    """A client whose errors end the command: ``<status> <code>: <message>``, exit 1."""
    api: Api = ctx.obj
    try:
        with Client(api.url, api.key or "", timeout=30) as c:
            yield c
    except ApiError as exc:
        _fail(f"{exc.status} {exc.code}: {exc.message}")
    except httpx.HTTPError as exc:
        _fail(f"cannot reach {api.url}: {exc}")


def schedule_id(c: Client, ref: str) -> str:
    """``ref`` is an id (``sch_…``) or a schedule's name."""
    if ref.startswith("sch_"):
        return ref
    for s in c.list_schedules():
        if s.name == ref:
            return s.id
    _fail(f"no schedule named {ref!r}")


def _fail(message: str) -> NoReturn:
    typer.secho(message, err=True, fg=typer.colors.RED)
    raise typer.Exit(1)


def _show(obj: Any) -> None:
    typer.echo(json.dumps(obj, indent=2, sort_keys=False))


@schedules_cli.callback()
def _options(
    ctx: typer.Context,
    api_url: Annotated[
        str, typer.Option(envvar="INFERQ_API_URL", help="Base URL of the inferq API.")
    ] = "http://127.0.0.1:8000",
    api_key: Annotated[
        str | None, typer.Option(envvar="INFERQ_API_KEY", help="API key (Bearer).")
    ] = None,
) -> None:
    ctx.obj = Api(api_url, api_key)


def _json_option(value: str | None, name: str) -> dict[str, Any] | None:
    if value is None:
        return None
    try:
        parsed = json.loads(value)
    except json.JSONDecodeError as exc:
        _fail(f"--{name} is not valid JSON: {exc}")
    if not isinstance(parsed, dict):
        _fail(f"--{name} must be a JSON object")
    return parsed


def build_source(
    source: str | None, path: str | None, watch: bool, query: str | None, watermark: str | None
) -> dict[str, Any]:
    """The source object from ``--source`` JSON or the shorthand options."""
    given = [x for x in (source, path, query) if x is not None]
    if len(given) != 1:
        _fail("give exactly one of --source JSON, --path GLOB or --query SQL")
    if source is not None:
        return _json_option(source, "source") or {}
    if path is not None:
        return {"type": "file", "path": path, "watch": watch}
    out: dict[str, Any] = {"type": "sql", "query": query}
    if watermark is not None:
        out["watermark_column"] = watermark
    return out


@schedules_cli.command("create")
def create(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="A name unique among your schedules.")],
    model: Annotated[str, typer.Option(help="Model to score with.")],
    cron: Annotated[str | None, typer.Option(help="Cron expression, e.g. '0 2 * * *'.")] = None,
    timezone: Annotated[str, typer.Option(help="IANA time zone of the cron.")] = "UTC",
    source: Annotated[str | None, typer.Option(help="Source as a JSON object.")] = None,
    path: Annotated[str | None, typer.Option(help="File source: a path or glob.")] = None,
    watch: Annotated[bool, typer.Option(help="With --path: a new file starts a run.")] = False,
    query: Annotated[str | None, typer.Option(help="SQL source: a SELECT.")] = None,
    watermark_column: Annotated[
        str | None, typer.Option(help="With --query: column of the incremental watermark.")
    ] = None,
    sink: Annotated[str | None, typer.Option(help="Sink as a JSON object.")] = None,
    callback_url: Annotated[str | None, typer.Option(help="Webhook for each run's job.")] = None,
    disabled: Annotated[bool, typer.Option(help="Create it paused.")] = False,
) -> None:
    """Create a schedule."""
    body: dict[str, Any] = {
        "name": name,
        "model": model,
        "timezone": timezone,
        "source": build_source(source, path, watch, query, watermark_column),
        "enabled": not disabled,
    }
    optional = {"cron": cron, "sink": _json_option(sink, "sink"), "callback_url": callback_url}
    body.update({k: v for k, v in optional.items() if v is not None})
    with _client(ctx) as c:
        _show(c.create_schedule(body).raw)


@schedules_cli.command("list")
def list_(ctx: typer.Context) -> None:
    """Your schedules, one a line: id, name, cron, timezone, model, enabled, next run, source."""
    with _client(ctx) as c:
        schedules = c.list_schedules()
    for sch in schedules:
        s = sch.raw
        src = s["source"]
        what = src.get("path") or " ".join(str(src.get("query") or "").split())[:60]
        typer.echo(
            "\t".join(
                [
                    s["id"],
                    s["name"],
                    s.get("cron") or "-",
                    s["timezone"],
                    s["model"],
                    "enabled" if s["enabled"] else "disabled",
                    s.get("next_run_at") or "-",
                    f"{src['type']}{'(watch)' if src.get('watch') else ''}:{what}",
                ]
            )
        )


@schedules_cli.command("get")
def get(ctx: typer.Context, schedule: Annotated[str, typer.Argument(help="Id or name.")]) -> None:
    """A schedule and its latest runs."""
    with _client(ctx) as c:
        sid = schedule_id(c, schedule)
        body = c.get_schedule(sid).raw
        body["runs"] = [r.raw for r in c.schedule_runs(sid, limit=5)]
    _show(body)


def _set_enabled(ctx: typer.Context, schedule: str, enabled: bool) -> None:
    with _client(ctx) as c:
        body = c.update_schedule(schedule_id(c, schedule), {"enabled": enabled}).raw
    typer.echo(
        f"{body['id']} {'enabled' if enabled else 'disabled'}; next run: "
        f"{body.get('next_run_at') or '-'}"
    )


@schedules_cli.command("enable")
def enable(
    ctx: typer.Context, schedule: Annotated[str, typer.Argument(help="Id or name.")]
) -> None:
    """Resume a schedule."""
    _set_enabled(ctx, schedule, True)


@schedules_cli.command("disable")
def disable(
    ctx: typer.Context, schedule: Annotated[str, typer.Argument(help="Id or name.")]
) -> None:
    """Pause a schedule (it fires no more until enabled)."""
    _set_enabled(ctx, schedule, False)


@schedules_cli.command("delete")
def delete(
    ctx: typer.Context, schedule: Annotated[str, typer.Argument(help="Id or name.")]
) -> None:
    """Delete a schedule and its run history (its jobs stay)."""
    with _client(ctx) as c:
        sid = schedule_id(c, schedule)
        c.delete_schedule(sid)
    typer.echo(f"{sid} deleted")


@schedules_cli.command("run-now")
def run_now(
    ctx: typer.Context,
    schedule: Annotated[str, typer.Argument(help="Id or name.")],
    wait: Annotated[bool, typer.Option(help="Wait until the run has made its job.")] = False,
    timeout: Annotated[float, typer.Option(help="Seconds to wait at most.")] = 120.0,
) -> None:
    """Run a schedule now, whether enabled or not."""
    with _client(ctx) as c:
        sid = schedule_id(c, schedule)
        run = c.run_schedule(sid)
        end = time.monotonic() + timeout
        while wait and run.status not in FINAL_RUN and time.monotonic() < end:
            time.sleep(0.5)
            run = next((r for r in c.schedule_runs(sid, limit=50) if r.id == run.id), run)
    if wait and run.status not in FINAL_RUN:
        _fail(f"run {run.id} is still {run.status} after {timeout:.0f}s")
    _show(run.raw)
    if run.status == "failed":
        raise typer.Exit(1)
