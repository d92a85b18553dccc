"""``inferq models …``: build the demo models, list what the registry holds."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from app.settings import get_settings

models_cli = typer.Typer(help="Build and list models.", no_args_is_help=True)


@models_cli.command("build")
def models_build(
    quantize: Annotated[
        bool, typer.Option(help="Also build the int8 variant of minilm-embed.")
    ] = False,
    force: Annotated[bool, typer.Option(help="Rebuild even if a verified build exists.")] = False,
    models_dir: Annotated[Path | None, typer.Option(help="Default: INFERQ_MODELS_DIR.")] = None,
) -> None:
    """Build the demo models from what installed packages ship (needs the [models] extra)."""
    from app.modelbuild import build_all

    target = models_dir or get_settings().models_dir
    for m in build_all(Path(target), quantize=quantize, force=force, progress=typer.echo):
        typer.echo(f"{m.name}:{m.version}  sha256={m.sha256[:12]}  kind={m.kind}")


@models_cli.command("list")
def models_list() -> None:
    """The registered models and their versions."""
    from app.registry import Registry

    reg = Registry(get_settings().models_dir)
    for name in reg.names():
        for e in reg.versions(name):
            m = e.manifest
            typer.echo(
                f"{m.name}\t{m.version}\t{m.kind}\t{m.sha256[:12]}\tbatch={m.batching.max_batch_size}"
                f"\tdelay={m.batching.max_delay_ms}ms"
            )


@models_cli.command("pull")
def models_pull(
    source: Annotated[
        Path | None, typer.Argument(help="A registry folder. Default: INFERQ_MODELS_SOURCE.")
    ] = None,
    name: Annotated[str | None, typer.Option(help="Only this model.")] = None,
) -> None:
    """Copy the versions this host lacks from a shared folder, each sha256-checked."""
    from app.errors import ModelNotReady
    from app.registry import Registry

    settings = get_settings()
    src = source or settings.models_source
    if src is None or not Path(src).is_dir():
        typer.echo(f"no such folder: {src} (give one, or set INFERQ_MODELS_SOURCE)", err=True)
        raise typer.Exit(2)
    try:
        copied = Registry(settings.models_dir).pull(Path(src), name)
    except ModelNotReady as exc:
        typer.echo(f"refused: {exc.message}", err=True)
        raise typer.Exit(1) from exc
    for e in copied:
        typer.echo(f"{e.manifest.name}:{e.manifest.version}  sha256={e.manifest.sha256[:12]}")
    if not copied:
        typer.echo("up to date")


def ensure_models() -> None:
    """Build the demo models when the registry holds none."""
    from app.registry import Registry

    reg = Registry(get_settings().models_dir)
    if not reg.names():
        typer.echo("no models yet: building the demo models …")
        models_build(quantize=False, force=False, models_dir=None)
