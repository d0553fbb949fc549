"""The browser demo: a small FastAPI app over one trained run.

    GET  /             the page (inline HTML/CSS/JS, nothing fetched from elsewhere)
    GET  /api/info     the run: method, classes, backbone, explainers, concepts, upload limit
    POST /api/explain  multipart field "file": one image -> prediction, probabilities, concept
                       scores, heat maps (PNG data URLs) and the textual explanation (JSON)

Safety: the run folder is read once, at start-up; no endpoint reads files, so none can reach
outside it. Uploads are limited in bytes (default 10 MB; the whole request body is capped before
it is parsed), must decode as an image (`data.images.load_image`, which also refuses
decompression bombs), and are explained one at a time (the model's explainer hooks are not
thread-safe) with a bounded queue: further requests get 503. Every rejection is JSON
`{"error": "<one line>"}` with a 4xx/5xx status. Bound to 127.0.0.1 unless told otherwise.
"""

import asyncio
import json
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from conceptclip.errors import ConfigError, DataError

MB = 1024 * 1024
FORM_OVERHEAD = 64 * 1024  # multipart boundaries and headers allowed on top of the file
DRAIN_FACTOR = 8  # an oversized body is read and dropped up to this many times the limit, then cut
# concept prompts encoded at start-up: 5,000 take about a minute on CPU with `lite` (a 100,000-concept
# bank took ~21 min before anything was served); `serve --max-concepts N` raises the cap
DEFAULT_MAX_CONCEPTS = 5000


@dataclass
class ServeConfig:
    """Limits of the demo server."""

    max_bytes: int = 10 * MB  # largest accepted upload
    max_concurrency: int = 1  # explanations computed at once (1: Grad-CAM hooks on one model are not thread-safe)
    max_queue: int = 4  # requests allowed to wait for a slot; more get 503
    max_concepts: int = DEFAULT_MAX_CONCEPTS  # a larger bank is refused at start-up (--max-concepts raises it)
    top_concepts: int = 8  # concept bars shown

    def __post_init__(self) -> None:
        for name in ("max_bytes", "max_concurrency", "top_concepts", "max_concepts"):
            if int(getattr(self, name)) < 1:
                raise ConfigError(f"serve: {name}={getattr(self, name)!r}: expected a positive integer")
        if self.max_queue < 0:
            raise ConfigError(f"serve: max_queue={self.max_queue!r}: expected 0 or more")


def _mb(n: int) -> str:
    return f"{n / MB:.1f} MB" if n >= MB else f"{n / 1024:.0f} KB"


class BodyLimit:
    """ASGI middleware: refuse request bodies over `limit` bytes with 413 before any parsing
    (by Content-Length, or by counting a chunked body as it streams in)."""

    def __init__(self, app: Any, limit: int, file_limit: int) -> None:
        self.app, self.limit, self.file_limit = app, limit, file_limit

    async def _refuse(self, send: Any) -> None:
        body = json.dumps({"error": f"the upload is larger than the limit of {_mb(self.file_limit)}"}).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                                (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body})

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["method"] not in ("POST", "PUT", "PATCH"):
            return await self.app(scope, receive, send)
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None and length.isdigit() and int(length) <= self.limit:
            return await self.app(scope, receive, send)
        # unknown or too large: read the body here, keeping at most `limit` bytes; an oversized body
        # is drained (up to DRAIN_FACTOR x limit) before the 413, so browsers see the answer
        chunks, total = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                break
            chunk = message.get("body", b"")
            total += len(chunk)
            if total <= self.limit:
                chunks.append(chunk)
            elif total > DRAIN_FACTOR * self.limit:
                break
            if not message.get("more_body", False):
                break
        if total > self.limit:
            return await self._refuse(send)
        body, sent = b"".join(chunks), False

        async def replay() -> dict:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        return await self.app(scope, replay, send)


def decode_upload(data: bytes, filename: str) -> Any:
    """PIL RGB image of uploaded bytes, read through `load_image` (full decode, pixel limit);
    DataError naming the upload (not the temporary file) when it is not an image."""
    from conceptclip.data.images import load_image

    with tempfile.TemporaryDirectory(prefix="conceptclip-upload-") as tmp:
        path = Path(tmp) / "upload"
        path.write_bytes(data)
        try:
            return load_image(path)
        except DataError as exc:
            reason = str(exc).replace(f"{path}: ", "").replace(str(path), filename)
            raise DataError(f"{filename!r} is not an image that can be decoded: {reason}") from None


def explanation_json(result: Any, top_k: int) -> dict[str, Any]:
    from conceptclip.report.overlay import png_data_url

    probs = sorted(result.probabilities.items(), key=lambda kv: -kv[1])
    return {"prediction": result.prediction,
            "probability": result.probabilities[result.prediction],
            "probabilities": [{"class": c, "p": p} for c, p in probs],
            "concept_kind": result.concept_kind,
            "concepts": result.top_concepts(top_k),
            "maps": [{"name": m.name, "title": m.title, "data_url": png_data_url(m.image), "failed": m.failed,
                      "sanity": m.sanity, "sanity_text": m.sanity_text} for m in result.maps],
            "image": png_data_url(result.shown),
            "rationale": result.rationale}


def create_app(run_dir: str | Path | None = None, *, explainer: Any = None, bank: str | None = None,
               concept_template: str | None = None, config: ServeConfig | None = None,
               device: str | None = None) -> Any:
    """The FastAPI app over `run_dir` (or a ready `report.explainer.RunExplainer`)."""
    try:
        from fastapi import FastAPI, Request
        from fastapi.concurrency import run_in_threadpool
        from fastapi.responses import HTMLResponse, JSONResponse
    except ImportError:
        raise ConfigError('serve needs the web extra: pip install -c constraints.txt "conceptclip[web]"') from None
    from starlette.datastructures import UploadFile
    from starlette.exceptions import HTTPException as StarletteHTTPException

    from conceptclip.report.explainer import RunExplainer
    from conceptclip.web.page import render_page

    cfg = config or ServeConfig()
    if explainer is None:
        if run_dir is None:
            raise ConfigError("serve: expected a run folder")
        explainer = RunExplainer(run_dir, bank=bank, concept_template=concept_template, device=device,
                                 max_concepts=cfg.max_concepts)
    info = {"run": Path(explainer.run_dir).name, "method": explainer.method_name, "classnames": explainer.classnames,
            "backbone": explainer.config.get("backbone"), "dataset": explainer.config.get("dataset"),
            "explainers": explainer.explainers, "concepts": len(explainer.concepts.names) if explainer.concepts else 0,
            "concept_source": explainer.concepts.source if explainer.concepts else None, "max_bytes": cfg.max_bytes}
    page = render_page(info)

    app = FastAPI(title="conceptclip demo", docs_url=None, redoc_url=None, openapi_url=None)
    slots = asyncio.Semaphore(cfg.max_concurrency)
    state = {"pending": 0}

    def error(status: int, message: str) -> JSONResponse:
        return JSONResponse({"error": message}, status_code=status)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return error(exc.status_code, "not found" if exc.status_code == 404 else str(exc.detail))

    @app.middleware("http")
    async def headers(request: Request, call_next: Any) -> Any:
        response = await call_next(request)
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Content-Security-Policy"] = (
            "default-src 'none'; img-src data:; style-src 'unsafe-inline'; script-src 'unsafe-inline'; "
            "connect-src 'self'; form-action 'none'; base-uri 'none'; frame-ancestors 'none'")
        return response

    @app.get("/", response_class=HTMLResponse)
    async def index() -> HTMLResponse:
        return HTMLResponse(page)

    @app.get("/api/info")
    async def api_info() -> dict[str, Any]:
        return info

    @app.post("/api/explain")
    async def api_explain(request: Request) -> JSONResponse:
        if not request.headers.get("content-type", "").startswith("multipart/form-data"):
            return error(400, "expected a multipart/form-data upload with the image in the field 'file'")
        try:
            form = await request.form(max_files=1, max_fields=8)
        except Exception as exc:  # malformed multipart bodies: starlette/python-multipart errors
            return error(400, f"malformed upload ({type(exc).__name__}: {exc})")
        try:
            file = form.get("file")
            if not isinstance(file, UploadFile):
                return error(400, "no file uploaded: send the image in the multipart form field 'file'")
            name = Path(file.filename or "upload").name
            data = await file.read(cfg.max_bytes + 1)
        finally:
            await form.close()
        if len(data) > cfg.max_bytes:
            return error(413, f"{name!r} is larger than the limit of {_mb(cfg.max_bytes)}")
        if not data:
            return error(400, f"{name!r} is empty")
        if state["pending"] >= cfg.max_concurrency + cfg.max_queue:
            return error(503, "the demo is busy with other images; try again in a moment")
        state["pending"] += 1
        try:
            async with slots:
                t0 = time.perf_counter()
                try:
                    image = await run_in_threadpool(decode_upload, data, name)
                except DataError as exc:
                    return error(415, str(exc))
                result = await run_in_threadpool(explainer.explain, image)
                doc = explanation_json(result, cfg.top_concepts)
                doc.update({"file": name, "seconds": round(time.perf_counter() - t0, 3)})
                return JSONResponse(doc)
        finally:
            state["pending"] -= 1

    return BodyLimit(app, cfg.max_bytes + FORM_OVERHEAD, cfg.max_bytes)
