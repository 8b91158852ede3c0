"""``jobbridge serve``: the UWS 1.1 service on the configured store and backends."""

from __future__ import annotations

from pathlib import Path

import click

from jobbridge.cli.app import Session

__all__ = ["serve"]


@click.command()
@click.option("--host", help="Address to listen on (default: [service] host, 127.0.0.1).")
@click.option("--port", type=int, help="Port to listen on (default: [service] port, 8000).")
@click.option(
    "--definitions",
    "definitions_dir",
    type=click.Path(file_okay=False, exists=True, path_type=Path),
    help="Directory of job definition YAML files (default: [service] definitions_dir).",
)
@click.option("--base-url", help="The URL clients reach the service at, for links.")
@click.option(
    "--anonymous/--no-anonymous", default=None, help="Serve requests without credentials."
)
@click.pass_obj
def serve(
    session: Session,
    host: str | None,
    port: int | None,
    definitions_dir: Path | None,
    base_url: str | None,
    anonymous: bool | None,
) -> None:
    """Serve the job definitions as IVOA UWS 1.1 job lists at {base}/jobs/{definition}."""
    import uvicorn

    from jobbridge.uws import create_app

    changes = {
        key: value
        for key, value in {
            "host": host, "port": port, "definitions_dir": definitions_dir,
            "base_url": base_url, "anonymous": anonymous,
        }.items()
        if value is not None
    }  # fmt: skip
    config = session.config
    settings = config.service.model_validate({**config.service.model_dump(), **changes})
    config = config.model_copy(update={"service": settings})
    app = create_app(config)
    url = settings.base_url or f"http://{settings.host}:{settings.port}"
    names = ", ".join(f"{url}/jobs/{name}" for name in app.state.uws.service.definitions)
    click.echo(f"jobbridge UWS service at {url} (job lists: {names or 'none'})", err=True)
    uvicorn.run(app, host=settings.host, port=settings.port, log_level="warning")
