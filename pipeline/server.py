"""`python -m pipeline serve`: a checkpoint behind an HTTP API and a web page with live attention.

    python -m pipeline serve --ckpt runs/NAME/checkpoints/best.ckpt [--host 127.0.0.1] [--port 8000]

Routes (FastAPI; the OpenAPI docs are at /docs and /redoc, their scripts served from here, not a CDN):
  GET  /            the page (pipeline/static/): text box, translation, n-best, cross-attention heatmap
  POST /translate   {"text": "..."} or {"texts": [...]}, optional "beam", "nbest"
  POST /attention   {"text": "..."}, optional "target" (default: the greedy translation), "self_attention"
  GET  /health      checkpoint, model config, languages, commit, limits, batching counters
  GET  /font.ttf    the Hangul font of the PNG heatmaps, so the page needs no Korean system font

Every error is JSON {"error": "one line"} with a 4xx status (5xx only for a bug), and the
server keeps serving.

Concurrency: the event loop never runs the model. A request becomes a `Job` on a queue; one
worker thread owns the model: it takes the first job, gathers more for at most max_wait_ms
(up to max_batch sentences) and translates the jobs with the same (beam, nbest) in one
`Translator` call. Under load the queue fills while a batch runs, so batches and throughput
grow with the load; an idle server adds at most max_wait_ms of latency.

Heavy imports (fastapi, uvicorn, torch) happen inside functions: cli.py imports `serve` from
here, and `python -m pipeline --help` stays fast. No `from __future__ import annotations`:
FastAPI reads the request models from the endpoint annotations, and they are local classes.
"""

import asyncio
import concurrent.futures
import copy
import functools
import io
import itertools
import queue
import socket
import threading
import time
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

from pipeline.errors import UserError
from pipeline.provenance import git_commit

STATIC = Path(__file__).resolve().parent / "static"
MAX_CHARS = 5000  # per sentence; longer is refused (413), a long but allowed one is cut at the token limit
MAX_SENTENCES = 64  # per request
MAX_BEAM = 8  # beam and nbest
MAX_QUEUE = 1024  # jobs waiting for the model; more are refused (503) instead of growing memory
MAX_BODY_BYTES = 4 * MAX_SENTENCES * MAX_CHARS + 65536  # UTF-8 of the largest valid request, and some
FONT_TYPES = {".ttf": "font/ttf", ".otf": "font/otf", ".ttc": "font/collection", ".woff2": "font/woff2"}


class ApiError(Exception):
    """A request the server refuses: HTTP status and a one-line message naming the problem."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


@dataclass
class Job:
    """One request's work for the model thread: kind "translate" (`texts` at `beam`, with the
    `nbest` best hypotheses and scores when set) or "attention" (`texts` holds one sentence)."""

    kind: str
    texts: list[str]
    beam: int = 1
    nbest: int | None = None
    target: str | None = None
    self_attention: bool = True
    future: concurrent.futures.Future = field(default_factory=concurrent.futures.Future)

    @property
    def group(self) -> tuple:
        # Jobs with equal keys run as one call; an attention job always runs alone.
        return ("translate", self.beam, self.nbest) if self.kind == "translate" else ("attention", id(self))


class BatchWorker:
    """The one thread that runs the model, fed through a queue of Jobs (see the module doc).

    Args:
        translator: the loaded `Translator`; its decoding.beam is the default beam.
        max_batch: most sentences gathered into one micro-batch (1: one request at a time).
        max_wait_ms: how long to wait for more jobs after the first one arrives.
        max_queue: most jobs waiting; `submit` refuses more (503).
    """

    def __init__(self, translator, max_batch: int = 32, max_wait_ms: float = 5.0, max_queue: int = MAX_QUEUE):
        self.translator, self.max_batch, self.max_wait = translator, max_batch, max_wait_ms / 1000
        self.queue: queue.Queue = queue.Queue(max_queue)
        self.translators = {translator.decoding.beam: translator}  # one per beam size, sharing the model
        self.stats = {"requests": 0, "sentences": 0, "batches": 0, "largest_batch": 0, "failed_batches": 0}
        self.thread = threading.Thread(target=self._run, name="pipeline-model", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Finish the jobs already queued, then end the thread."""
        if self.thread.is_alive():
            self.queue.put(None, timeout=timeout)
            self.thread.join(timeout)

    def submit(self, job: Job) -> concurrent.futures.Future:
        """Queue a job; its future gets the result dict or the exception."""
        try:
            self.queue.put_nowait(job)
        except queue.Full:
            raise ApiError(503, f"server busy: {self.queue.maxsize} requests are waiting; retry later") from None
        return job.future

    def _collect(self) -> tuple[list[Job], bool]:
        """Block for one job, then take more until max_batch sentences or max_wait has passed
        (jobs already queued are taken even after the wait). Returns (jobs, stop)."""
        first = self.queue.get()
        if first is None:
            return [], True
        jobs, n, stop = [first], len(first.texts), False
        deadline = time.monotonic() + self.max_wait
        while n < self.max_batch:
            try:
                job = self.queue.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                break
            if job is None:
                stop = True
                break
            jobs.append(job)
            n += len(job.texts)
        # A job whose request went away is cancelled; the others can no longer be.
        return [j for j in jobs if j.future.set_running_or_notify_cancel()], stop

    def _run(self) -> None:
        stop = False
        while not stop:
            jobs, stop = self._collect()
            groups: dict[tuple, list[Job]] = {}
            for job in jobs:
                groups.setdefault(job.group, []).append(job)
            for group in groups.values():
                self._run_group(group)

    def _run_group(self, jobs: list[Job]) -> None:
        try:
            results = self._translate(jobs) if jobs[0].kind == "translate" else [self._attention(jobs[0])]
        except Exception as e:  # the caller turns it into an error response; the thread goes on
            self.stats["failed_batches"] += 1
            if len(jobs) > 1:  # one bad request must not fail the others batched with it: each alone
                for job in jobs:
                    self._run_group([job])
                return
            jobs[0].future.set_exception(e)
            return
        n, stats = sum(len(job.texts) for job in jobs), self.stats
        stats |= {"requests": stats["requests"] + len(jobs), "sentences": stats["sentences"] + n,
                  "batches": stats["batches"] + 1, "largest_batch": max(stats["largest_batch"], n)}
        for job, result in zip(jobs, results):
            job.future.set_result(result)

    def translator_for(self, beam: int):
        base = self.translator
        if beam not in self.translators:
            self.translators[beam] = base.with_beam(beam)
        return self.translators[beam]

    def _truncated(self, texts: list[str]) -> list[int]:
        """Indices of the texts longer than the model reads (Translator cuts them)."""
        from pipeline.tokenizer import encode

        limit = self.translator.max_src_tokens
        return [i for i, ids in enumerate(encode(self.translator.tokenizer, texts)) if len(ids) >= limit]

    def _translate(self, jobs: list[Job]) -> list[dict]:
        """One Translator call for all sentences of the jobs (same beam and nbest)."""
        translator = self.translator_for(jobs[0].beam)
        texts = [t for job in jobs for t in job.texts]
        nbest = jobs[0].nbest
        if nbest is None:
            hyps, lists = translator.translate(texts), None
        else:  # Translator.nbest takes one sentence at a time
            lists = [[{"text": t, "score": s} for t, s in translator.nbest(text, nbest)] for text in texts]
            hyps = [hyp[0]["text"] for hyp in lists]
        ends = list(itertools.accumulate(len(job.texts) for job in jobs))
        return [{"translations": hyps[end - len(job.texts):end], "truncated": self._truncated(job.texts),
                 "nbest": None if lists is None else lists[end - len(job.texts):end]} for job, end in zip(jobs, ends)]

    def _attention(self, job: Job) -> dict:
        maps = self.translator.attention(job.texts[0], job.target)

        def weights(tensors) -> list:
            # float64 before rounding, so 0.1234 prints as 0.1234 in the JSON
            return [w.double().mul(1e4).round().div(1e4).tolist() for w in tensors]

        out = {"source": maps.source, "target": maps.target, "src_tokens": maps.src_tokens,
               "tgt_in_tokens": maps.tgt_in_tokens, "tgt_out_tokens": maps.tgt_out_tokens,
               "layers": len(maps.cross), "heads": int(maps.cross[0].shape[0]), "cross": weights(maps.cross),
               "truncated": self._truncated(job.texts)}
        if job.self_attention:
            out |= {"encoder_self": weights(maps.encoder_self), "decoder_self": weights(maps.decoder_self)}
        return out


@functools.cache
def web_font(path: Path) -> bytes:
    """The font file as browsers take it. Chromium's font sanitizer rejects NanumGothic.ttf for
    its empty TSI3 table (hinting sources of a font editor, never used to draw), so the TSI*
    tables and any empty one are left out (fontTools comes with matplotlib). A file fontTools
    cannot read this way (a .ttc collection) is sent as it is."""
    try:
        from fontTools.ttLib import TTFont

        font = TTFont(path, lazy=True)
        tables = font.reader.tables
        for tag in [t for t in tables if t.startswith("TSI") or tables[t].length == 0]:
            del font[tag]
        out = io.BytesIO()
        font.save(out)
        return out.getvalue()
    except Exception:
        return path.read_bytes()


def _check_text(text: str, name: str) -> None:
    if not text.strip():
        raise ApiError(422, f"{name} is empty: send a sentence, e.g. {{\"text\": \"...\"}}")
    if len(text) > MAX_CHARS:
        raise ApiError(413, f"{name} is {len(text)} characters long; the limit is {MAX_CHARS} per sentence")
    try:  # JSON's \ud800 escapes decode to lone surrogates, which no tokenizer takes
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise ApiError(422, f"{name} is not valid Unicode text ({e.reason} at character {e.start}): "
                            "send whole characters") from None


def _validation_message(errors) -> tuple[int, str]:
    """(status, one line) for pydantic's errors: 400 for a body that is not JSON, else 422."""
    for e in errors:
        if e.get("type") == "json_invalid":
            cause = (e.get("ctx") or {}).get("error", "not JSON")
            return 400, f"invalid JSON body ({cause}): send an object like {{\"text\": \"...\"}}"
    parts = [f"{'.'.join(str(p) for p in e.get('loc', ())[1:]) or 'body'}: {e.get('msg', 'invalid')}"
             for e in errors[:3]]
    return 422, "; ".join(parts).replace("\n", " ")


def create_app(translator, max_batch: int = 32, max_wait_ms: float = 5.0, font: Path | None = None,
               commit: str | None = None):
    """The FastAPI app serving `translator` (a `Translator`); its model runs in one `BatchWorker`
    thread, started and stopped with the app's lifespan. `font`: the file behind /font.ttf."""
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import FileResponse, JSONResponse, Response
    from fastapi.staticfiles import StaticFiles
    from fastapi_offline import FastAPIOffline
    from pydantic import BaseModel, ConfigDict, Field
    from starlette.exceptions import HTTPException

    # Decoding in this process: forking decoding workers (pipeline.workers) from the model thread
    # for every micro-batch would add their start-up to each request's latency and fork a
    # process full of server threads; under load the micro-batches grow instead (Concurrency above).
    translator = copy.copy(translator)
    translator.workers = 1
    worker = BatchWorker(translator, max_batch, max_wait_ms)
    commit = git_commit() if commit is None else commit
    src_lang, tgt_lang = translator.languages
    languages = {"source": src_lang, "target": tgt_lang}

    @asynccontextmanager
    async def lifespan(app):
        worker.start()
        yield
        await asyncio.to_thread(worker.stop)

    # FastAPI's /docs and /redoc pages load their scripts from a CDN; these serve the same pages
    # with the scripts shipped in the fastapi-offline package (/static-offline-docs/), offline too.
    app = FastAPIOffline(title="pipeline translation server", lifespan=lifespan,
                         description=f"A {src_lang}→{tgt_lang} Transformer checkpoint: translations, n-best "
                                     "lists and attention weights. Errors are {\"error\": \"...\"}.")
    app.state.worker = worker

    class Strict(BaseModel):
        # strict: "4" is not a beam, 5 is not a text; forbid: a misspelt key is named, not ignored
        model_config = ConfigDict(strict=True, extra="forbid")

    class TranslateRequest(Strict):
        text: str | None = Field(None, description=f"one sentence (at most {MAX_CHARS} characters)")
        texts: list[str] | None = Field(None, description=f"several sentences (at most {MAX_SENTENCES})")
        beam: int | None = Field(None, ge=1, le=MAX_BEAM, description="beam size (default: the server's)")
        nbest: int | None = Field(None, ge=1, le=MAX_BEAM,
                                  description="also return the n best hypotheses with scores (widens the beam to n)")

    class AttentionRequest(Strict):
        text: str = Field(description="source sentence")
        target: str | None = Field(None, description="target to feed the decoder (default: greedy translation)")
        self_attention: bool = Field(True, description="also return encoder and decoder self-attention")

    async def run(job: Job) -> dict:
        try:
            return await asyncio.wrap_future(worker.submit(job))
        except UserError as e:
            raise ApiError(422, str(e)) from None

    def truncation_warnings(result: dict, names: list[str]) -> list[str]:
        return [f"{names[i]} is longer than {translator.max_src_tokens} tokens: only its start was translated"
                for i in result.pop("truncated")]

    @app.post("/translate", summary="translate one sentence or a list of sentences")
    async def translate(request: TranslateRequest) -> dict:
        """`translations` (one per sentence; `translation` too for "text"), `nbest` (per sentence,
        best first: [{"text", "score"}]; score = log p / length^length_penalty) when asked,
        `beam`, `languages`, `warnings`."""
        if (request.text is None) == (request.texts is None):
            raise ApiError(422, "pass \"text\" (one sentence) or \"texts\" (a list)"
                           + (", not both" if request.text is not None else ""))
        if request.texts is not None:
            if not request.texts:
                raise ApiError(422, "texts is empty: send at least one sentence")
            if len(request.texts) > MAX_SENTENCES:
                raise ApiError(413, f"{len(request.texts)} sentences in one request; the limit is {MAX_SENTENCES}")
        texts, names = ([request.text], ["text"]) if request.text is not None else (
            request.texts, [f"texts[{i}]" for i in range(len(request.texts))])
        for text, name in zip(texts, names):
            _check_text(text, name)
        beam, warnings = request.beam or translator.decoding.beam, []
        if request.nbest is not None and request.nbest > beam:
            warnings.append(f"nbest {request.nbest} > beam {beam}: the beam was widened to {request.nbest}")
            beam = request.nbest
        result = await run(Job("translate", texts, beam, request.nbest))
        warnings += truncation_warnings(result, names)
        out = {"translations": result["translations"], "nbest": result["nbest"], "beam": beam,
               "languages": languages, "warnings": warnings}
        return out | ({"translation": result["translations"][0]} if request.text is not None else {})

    @app.post("/attention", summary="attention weights of the model on one sentence")
    async def attention(request: AttentionRequest) -> dict:
        """Tokens (`src_tokens`: encoder positions; `tgt_out_tokens`: what each decoder position
        predicts; `tgt_in_tokens`: what it reads) and weights per layer and head:
        `cross[layer][head][target][source]`, with `self_attention` also
        `encoder_self[layer][head][source][source]` and `decoder_self[layer][head][target][target]`."""
        _check_text(request.text, "text")
        if request.target is not None:
            _check_text(request.target, "target")
            from pipeline.tokenizer import MAX_SOURCE_TOKENS, encode

            # The maps grow with target × source per head and layer: a 5,000-character target
            # would answer with tens of MB, and one past the model's positions would be cut.
            length = len(encode(translator.tokenizer, [request.target])[0])
            if length > MAX_SOURCE_TOKENS:
                raise ApiError(413, f"target is {length} tokens long; the limit is {MAX_SOURCE_TOKENS}")
        result = await run(Job("attention", [request.text], target=request.target,
                               self_attention=request.self_attention))
        return result | {"languages": languages, "warnings": truncation_warnings(result, ["text"])}

    @app.get("/health", summary="what is served, and how busy it is")
    async def health() -> dict:
        return {"status": "ok", "commit": commit, "languages": languages,
                "model": {"checkpoint": str(translator.checkpoint.path), "config": translator.model.cfg.to_dict(),
                          "decoding": asdict(translator.decoding), "device": str(translator.device),
                          "quantize": translator.quantize,
                          "parameters": sum(p.numel() for p in translator.checkpoint.model.parameters())},
                "limits": {"max_chars": MAX_CHARS, "max_sentences": MAX_SENTENCES, "max_beam": MAX_BEAM,
                           "max_source_tokens": translator.max_src_tokens},
                "batching": {"max_batch": worker.max_batch, "max_wait_ms": worker.max_wait * 1000,
                             "queued": worker.queue.qsize(), **worker.stats}}

    @app.get("/", include_in_schema=False)
    async def page():
        return FileResponse(STATIC / "index.html")

    @app.get("/font.ttf", include_in_schema=False)
    async def font_file():
        if font is None:
            raise ApiError(404, "no Hangul font on the server (pip install koreanize-matplotlib, or apt-get "
                                "install fonts-nanum): the page falls back to system fonts")
        return Response(await asyncio.to_thread(web_font, font), headers={"Cache-Control": "max-age=86400"},
                        media_type=FONT_TYPES.get(font.suffix.lower(), "application/octet-stream"))

    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    def error(status: int, message: str) -> JSONResponse:
        return JSONResponse({"error": message}, status_code=status)

    @app.exception_handler(ApiError)
    async def api_error(request, exc: ApiError):
        return error(exc.status, str(exc))

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request, exc: RequestValidationError):
        return error(*_validation_message(exc.errors()))

    @app.exception_handler(HTTPException)
    async def http_error(request, exc: HTTPException):
        if exc.status_code == 404:
            return error(404, f"no such route: {request.method} {request.url.path} (the API is POST /translate, "
                              "POST /attention, GET /health; docs at /docs)")
        if exc.status_code == 405:
            return error(405, f"{request.method} is not allowed on {request.url.path}: use "
                              + ("POST with a JSON body" if request.url.path in ("/translate", "/attention") else "GET"))
        return error(exc.status_code, str(exc.detail))

    @app.exception_handler(Exception)
    async def bug(request, exc: Exception):
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else "no message"
        return error(500, f"internal error: {type(exc).__name__}: {first}")

    app.add_middleware(BodyLimit)
    return app


class BodyLimit:
    """ASGI middleware: refuse a body over MAX_BODY_BYTES before it is read (a request that
    large breaks the limits anyway). Plain ASGI: @app.middleware costs time per request."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope.get("headers", ())).get(b"content-length", b"")
        if length.isdigit():
            if int(length) > MAX_BODY_BYTES:
                return await self.refuse(f"{int(length)} bytes", scope, receive, send)
            return await self.app(scope, receive, send)
        # No Content-Length (a chunked body): read it here, up to the limit, then hand it on.
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client went away
                return
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > MAX_BODY_BYTES:
                return await self.refuse(f"over {MAX_BODY_BYTES} bytes", scope, receive, send)
            if not message.get("more_body"):
                break
        body, handed = b"".join(chunks), False

        async def replay():
            nonlocal handed
            if handed:
                return await receive()
            handed = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)

    @staticmethod
    async def refuse(size: str, scope, receive, send) -> None:
        from fastapi.responses import JSONResponse

        message = f"request body is {size}; the limit is {MAX_BODY_BYTES}"
        await JSONResponse({"error": message}, status_code=413)(scope, receive, send)


def _listen(host: str, port: int) -> socket.socket:
    """A listening socket, bound here so that a busy port is a one-line error, not a traceback."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        sock = socket.socket(family, kind, proto)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # restart right after a stop
        sock.bind(address)
        sock.listen(2048)
    except OSError as e:
        raise UserError(f"cannot listen on {host}:{port} ({e.strerror or e}): pass another --port "
                        "(or --port 0 for any free one) or --host") from None
    return sock


def serve(ckpt: str, host: str = "127.0.0.1", port: int = 8000, beam: int | None = None, max_batch: int = 32,
          max_wait_ms: float = 5.0, quantize: str | None = None) -> None:
    """Serve a checkpoint over HTTP: POST /translate, POST /attention, GET /health, API docs at
    /docs, and a web page at / that translates as you type and draws the cross-attention.

    Args:
        ckpt: checkpoint, e.g. runs/multi30k/checkpoints/best.ckpt.
        host: address to listen on (127.0.0.1: this machine only; 0.0.0.0: every network interface).
        port: TCP port (0: any free port, printed at start).
        beam: beam size of requests that give none (1 = greedy; default: the run's decoding.beam).
        max_batch: most sentences translated together in one micro-batch (1: one request at a time).
        max_wait_ms: how long the model thread waits for more requests before it runs a batch.
        quantize: decode in lower precision: int8 (linear layers; CPU only) or bf16.
    """
    if not 0 <= port <= 65535:
        raise UserError(f"--port must be between 0 and 65535, got {port}")
    if beam is not None and not 1 <= beam <= MAX_BEAM:
        raise UserError(f"--beam must be between 1 and {MAX_BEAM}, got {beam}")
    if max_batch < 1:
        raise UserError(f"--max_batch must be >= 1, got {max_batch}")
    if not 0 <= max_wait_ms <= 1000:
        raise UserError(f"--max_wait_ms must be between 0 and 1000, got {max_wait_ms}")
    sock = _listen(host, port)
    import uvicorn

    from pipeline.plotting import hangul_font_path
    from pipeline.translator import Translator

    translator = Translator.from_checkpoint(ckpt, beam=beam, device="auto", quantize=quantize)
    app = create_app(translator, max_batch, max_wait_ms, font=hangul_font_path())
    bound = sock.getsockname()
    url_host = f"[{bound[0]}]" if sock.family == socket.AF_INET6 else bound[0]
    src, tgt = translator.languages
    print(f"serving {ckpt} ({src}→{tgt}, beam {translator.decoding.beam}, device {translator.device}) at "
          f"http://{url_host}:{bound[1]}/  (API docs: /docs; Ctrl-C stops)", flush=True)
    # No access log: one line per request costs throughput under load; errors are still logged.
    config = uvicorn.Config(app, log_level="warning", access_log=False, timeout_graceful_shutdown=10)
    uvicorn.Server(config).run(sockets=[sock])
