"""`conceptclip serve --run RUN_DIR` (mounted on the root app by `conceptclip.cli`)."""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

from conceptclip.cli.options import RUN_DEVICE_HELP, DeviceOption, given_device, require

# the web extra (pyproject.toml): python-multipart is imported as `python_multipart` (>= 0.0.13) or `multipart`
WEB_MODULES = ("fastapi", "uvicorn", "python_multipart|multipart")

serve_app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                        help="A local browser demo over a trained run.")
console = Console(stderr=True)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@serve_app.callback(invoke_without_command=True)
def serve(
    run: Path = typer.Option(..., "--run", help="a finished results folder (config.json + model.safetensors)"),
    host: str = typer.Option("127.0.0.1", help="interface to bind (default: this machine only)"),
    port: int = typer.Option(8000, help="TCP port"),
    concepts: Optional[str] = typer.Option(None, "--concepts", help="concept bank (JSON file or shared-bank name); "
                                                                    "default: the shared bank named like the dataset"),
    concept_template: Optional[str] = typer.Option(None, help="prompt of a concept phrase, e.g. 'an image showing {}' "
                                                              "(default: from the run's class template)"),
    max_mb: float = typer.Option(10.0, help="largest accepted upload in MB"),
    queue: int = typer.Option(4, help="requests that may wait while one image is explained; more get 503"),
    max_concepts: int = typer.Option(5000, help="largest concept bank served (each concept is encoded at start-up, "
                                                "about a minute per 5,000 on CPU); a larger bank is refused"),
    device: Optional[str] = DeviceOption(RUN_DEVICE_HELP),
) -> None:
    """Serve a page at http://HOST:PORT/: upload an image, see the prediction, concept scores,
    heat maps and the textual explanation."""
    require("serve", WEB_MODULES, "web")
    import uvicorn

    from conceptclip.errors import ConfigError
    from conceptclip.web.app import MB, ServeConfig, create_app

    if not 0 < port < 65536:
        raise ConfigError(f"--port {port}: expected 1-65535")
    if max_mb <= 0:
        raise ConfigError(f"--max-mb {max_mb}: expected a positive size")
    limits = ServeConfig(max_bytes=int(max_mb * MB), max_queue=queue, max_concepts=max_concepts)
    app = create_app(run, bank=concepts, concept_template=concept_template, device=given_device(device), config=limits)
    if not is_loopback(host):
        console.print(f"[yellow]warning:[/yellow] serving on {host}: other machines can reach the demo and upload "
                      "images; it has no authentication")
    console.print(f"conceptclip demo on http://{host}:{port}/ (Ctrl-C stops it)")
    uvicorn.run(app, host=host, port=port, log_level="warning", workers=1)
