"""``inferq schedules …``: manage schedules through the HTTP API (``--api-url``, ``--api-key``)."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Annotated, Any, NoReturn

import httpx
import typer

schedules_cli = typer.Typer(
    help="Schedules: cron or file-triggered batch jobs.", no_args_is_help=True
)

FINAL_RUN = {"submitted", "skipped", "failed"}


@dataclass
class Api:
    url: str
    key: str | None

    def call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        headers = {"Authorization": f"Bearer {self.key}"} if self.key else {}
        try:
            resp = httpx.request(
                method, f"{self.url.rstrip('/')}{path}", json=body, headers=headers, timeout=30
            )
        except httpx.HTTPError as exc:
            _fail(f"cannot reach {self.url}: {exc}")
        if resp.status_code >= 400:
            try:
                err = resp.json()["error"]
                _fail(f"{resp.status_code} {err['code']}: {err['message']}")
            except (ValueError, KeyError, TypeError):
                _fail(f"{resp.status_code}: {resp.text[:300]}")
        return resp.json()

    def schedule_id(self, ref: str) -> str:
        """``ref`` is an id (``sch_…``) or a schedule's name."""
        if ref.startswith("sch_"):
            return ref
        for s in self.call("GET", "/v1/schedules")["schedules"]:
            if s["name"] == ref:
                return str(s["id"])
        _fail(f"no schedule named {ref!r}")


def _fail(message: str) -> NoReturn:
    typer.secho(message, err=True, fg=typer.colors.RED)
    raise typer.Exit(1)


def _api(ctx: typer.Context) -> Api:
    return ctx.obj  # type: ignore[no-any-return]


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
    _show(_api(ctx).call("POST", "/v1/schedules", body))


@schedules_cli.command("list")
def list_(ctx: typer.Context) -> None:
    """Your schedules, one a line: id, name, cron, timezone, model, enabled, next run, source."""
    for s in _api(ctx).call("GET", "/v1/schedules")["schedules"]:
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
    api = _api(ctx)
    sid = api.schedule_id(schedule)
    body = api.call("GET", f"/v1/schedules/{sid}")
    body["runs"] = api.call("GET", f"/v1/schedules/{sid}/runs?limit=5")["runs"]
    _show(body)


def _set_enabled(ctx: typer.Context, schedule: str, enabled: bool) -> None:
    api = _api(ctx)
    body = api.call("PATCH", f"/v1/schedules/{api.schedule_id(schedule)}", {"enabled": enabled})
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
    api = _api(ctx)
    sid = api.schedule_id(schedule)
    api.call("DELETE", f"/v1/schedules/{sid}")
    typer.echo(f"{sid} deleted")


@schedules_cli.command("run-now")
def run_now(
    ctx: typer.Context,
    schedule: Annotated[str, typer.Argument(help="Id or name.")],
    wait: Annotated[bool, typer.Option(help="Wait until the run has made its job.")] = False,
    timeout: Annotated[float, typer.Option(help="Seconds to wait at most.")] = 120.0,
) -> None:
    """Run a schedule now, whether enabled or not."""
    api = _api(ctx)
    sid = api.schedule_id(schedule)
    run = api.call("POST", f"/v1/schedules/{sid}/run")
    end = time.monotonic() + timeout
    while wait and run["status"] not in FINAL_RUN and time.monotonic() < end:
        time.sleep(0.5)
        runs = api.call("GET", f"/v1/schedules/{sid}/runs?limit=50")["runs"]
        run = next((r for r in runs if r["id"] == run["id"]), run)
    if wait and run["status"] not in FINAL_RUN:
        _fail(f"run {run['id']} is still {run['status']} after {timeout:.0f}s")
    _show(run)
    if run["status"] == "failed":
        raise typer.Exit(1)
