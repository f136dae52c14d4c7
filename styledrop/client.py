"""The Styledrop HTTP API from Python: `Client` and its resources (styles, jobs, generations, rounds, adapters).

    from styledrop import Client

    with Client("http://127.0.0.1:8000", api_key="sd_...") as sd:
        up = sd.styles.create(["watercolor.png"], descriptor="watercolor painting", steps=60)
        job = sd.jobs.wait(up.job.id)
        gen = sd.generations.create("a cat in watercolor painting style", adapter_id=job.adapter_id, wait=60)
        png = sd.generations.image(sd.generations.wait(gen.id).id, 0)

Every error answer is raised as an `APIError` subclass carrying the problem's `code` (styledrop.errors). 429 and
503 answers are retried after their `Retry-After` (at most `max_retry_wait` seconds each, `max_retries` times); a
request that got no answer, or a proxy's 502/504, is retried when repeating it is safe: a GET or DELETE, a POST
with an `Idempotency-Key`, or any request that never connected. Uploads and generations get an `Idempotency-Key` by
default, the same one on every retry, so a retried POST never creates twice.

Only httpx and the standard library are imported: the client is usable without the service's own packages.
"""

from __future__ import annotations

import base64
import binascii
import builtins
import contextlib
import hashlib
import hmac
import json
import os
import random
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO, Any, TypeVar
from urllib.parse import urljoin, urlsplit

import httpx

from styledrop._sse import parse_sse
from styledrop.errors import (
    APIConnectionError,
    APIError,
    APITimeoutError,
    AuthenticationError,
    IntegrityError,
    StyledropError,
    WaitTimeoutError,
    error_class,
    parse_retry_after,
)
from styledrop.models import Adapter, Generation, Job, JobEvent, Page, Style, StyleCreated, Version

T = TypeVar("T")

DEFAULT_BASE_URL = "http://127.0.0.1:8000"
REFUSED_STATUSES = frozenset({429, 503})  # the service refused before doing anything: any request may go again
PROXY_STATUSES = frozenset({502, 504})  # a proxy's failure: the service may have acted, so only replayable ones
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE"})  # RFC 9110 section 9.2.2: idempotent
STREAM_READ_TIMEOUT = 60.0  # the service sends a keep-alive comment every 15 s on an idle event stream

# A file to upload: a path, its bytes, or an open binary file.
FileInput = str | os.PathLike[str] | bytes | IO[bytes]

_sleep = time.sleep  # module-level, so tests can replace the waiting without replacing time.sleep everywhere


def _read_file(value: FileInput) -> tuple[str, bytes]:
    """(file name, bytes) of an upload, read once so that a retry sends the very same bytes."""
    if isinstance(value, bytes):
        return "image.png", value
    if isinstance(value, str | os.PathLike):
        path = Path(value)
        return path.name, path.read_bytes()
    name = Path(str(getattr(value, "name", "image.png"))).name
    return name, value.read()


def _form_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list | tuple):
        return ",".join(str(v) for v in value)
    return str(value)


class Client:
    """A Styledrop API client. `base_url` defaults to `$STYLEDROP_URL` (else http://127.0.0.1:8000) and `api_key`
    to `$STYLEDROP_API_KEY`. `timeout` is each request's limit in seconds; `max_retries` how often a 429/503 or
    a lost connection is retried; `max_retry_wait` the longest `Retry-After` it sleeps through (a longer one is
    raised at once, as `RateLimitError` with `retry_after`). `http_client` replaces the underlying
    `httpx.Client` (a proxy, custom TLS, a test transport); the client then neither configures nor closes it."""

    def __init__(self, base_url: str | None = None, api_key: str | None = None, *, timeout: float = 60.0,
                 max_retries: int = 2, max_retry_wait: float = 60.0, http_client: httpx.Client | None = None) -> None:
        base_url = base_url or os.environ.get("STYLEDROP_URL") or DEFAULT_BASE_URL
        api_key = api_key or os.environ.get("STYLEDROP_API_KEY")
        if not api_key:
            raise StyledropError("no API key: pass api_key= or set STYLEDROP_API_KEY (`styledrop users create` "
                                 "prints one)")
        if max_retries < 0:
            raise ValueError(f"max_retries must be 0 or more, not {max_retries}")
        self.base_url = base_url.rstrip("/")
        self.timeout, self.max_retries, self.max_retry_wait = timeout, max_retries, max_retry_wait
        self._headers = {"Authorization": f"Bearer {api_key}", "Accept": "application/json",
                         "User-Agent": "styledrop-python"}
        self._owns_http = http_client is None
        self._http = http_client or httpx.Client(timeout=timeout)
        self.styles = Styles(self)
        self.jobs = Jobs(self)
        self.generations = Generations(self)
        self.rounds = Rounds(self)
        self.adapters = Adapters(self)
        self.webhooks = Webhooks(self)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._owns_http:
            self._http.close()

    def __repr__(self) -> str:
        return f"Client({self.base_url!r})"

    # --- plumbing ----------------------------------------------------------------------------------------------

    def url(self, path_or_url: str) -> str:
        """The absolute URL to request for an API path (`/v1/...`) or a URL the API answered with. A URL on
        another origin (a `public_url` the service announces while this client reaches it at another address) is
        re-based onto `base_url` from its `/v1/` path, so the API key never leaves for another host."""
        parts = urlsplit(path_or_url)
        if not parts.scheme:
            return self.base_url + "/" + path_or_url.lstrip("/")
        base = urlsplit(self.base_url)
        if (parts.scheme, parts.netloc) == (base.scheme, base.netloc):
            return path_or_url
        at = parts.path.find("/v1/")
        if at < 0:
            raise StyledropError(f"refusing to follow {path_or_url!r}: not an API URL of {self.base_url}")
        tail = parts.path[at:] + (f"?{parts.query}" if parts.query else "")
        return self.base_url + tail

    def request(self, method: str, path: str, *, params: Mapping[str, Any] | None = None, json_body: Any = None,
                data: Mapping[str, Any] | None = None, files: Any = None, headers: Mapping[str, str] | None = None,
                timeout: float | httpx.Timeout | None = None, stream: bool = False) -> httpx.Response:
        """One API call with the client's retries; an error answer is raised as its `APIError`. With `stream`
        the response is open and unread: close it (use it as a context manager)."""
        method = method.upper()
        all_headers = {**self._headers, **(headers or {})}
        replayable = method in SAFE_METHODS or "Idempotency-Key" in all_headers
        attempt = 0
        while True:
            request = self._http.build_request(  # built again for every attempt: a fresh body stream each time
                method, self.url(path), params=params, json=json_body, data=data, files=files, headers=all_headers,
                timeout=timeout if timeout is not None else self.timeout)
            try:
                response = self._http.send(request, stream=stream)
            except httpx.TransportError as exc:
                # never connected: nothing was sent, so any request may go again
                safe = replayable or isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout)
                if safe and attempt < self.max_retries:
                    _sleep(self._backoff(attempt))
                    attempt += 1
                    continue
                kind = APITimeoutError if isinstance(exc, httpx.TimeoutException) else APIConnectionError
                raise kind(f"{method} {request.url}: {exc!r}") from exc
            if response.status_code < 400:
                return response
            if stream:
                response.read()
                response.close()
            error = self._error(response)
            retry = response.status_code in REFUSED_STATUSES or (replayable and response.status_code in PROXY_STATUSES)
            if retry and attempt < self.max_retries:
                delay = error.retry_after if error.retry_after is not None else self._backoff(attempt)
                if delay <= self.max_retry_wait:
                    _sleep(delay)
                    attempt += 1
                    continue
            raise error

    @staticmethod
    def _backoff(attempt: int) -> float:
        """0.5 s, 1 s, 2 s, ... up to 8 s, with up to a quarter of jitter so that clients do not retry in step."""
        delay = min(0.5 * 2**attempt, 8.0)
        return delay * (1 - 0.25 * random.random())

    @staticmethod
    def _error(response: httpx.Response) -> APIError:
        try:
            body = response.json()
        except ValueError:
            body = None
        return error_class(response.status_code)(
            response.status_code, body if isinstance(body, dict) else None, headers=dict(response.headers),
            method=response.request.method, url=str(response.request.url))

    def get_json(self, path: str, params: Mapping[str, Any] | None = None) -> Any:
        return self.request("GET", path, params=params).json()

    def get_bytes(self, path: str) -> bytes:
        return self.request("GET", path, headers={"Accept": "*/*"}).content

    def page(self, path: str, parse: Callable[[Mapping[str, Any]], T],
             params: Mapping[str, Any] | None = None) -> Page[T]:
        """One page of a listing (the `{"items", "next"}` envelope every listing answers), iterable over every
        later page."""
        query = {k: v for k, v in (params or {}).items() if v is not None}
        # None, not {}: httpx replaces a URL's own query (a `next` link's) with any params given, even empty ones
        response = self.request("GET", path, params=query or None)
        body = response.json()
        items, next_url = body["items"], body.get("next")
        if next_url:
            next_url = urljoin(str(response.request.url), next_url)
        return Page(items=[parse(i) for i in items], next=next_url,
                    fetch_next=lambda url: self.page(url, parse))


def _clean(values: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in values.items() if v is not None}


class _Resource:
    def __init__(self, client: Client) -> None:
        self._client = client


class Styles(_Resource):
    """Styles and subjects: upload, read, retrain, versions."""

    def create(self, images: FileInput | Sequence[FileInput], *, descriptor: str | None = None,
               content: str | None = None, captions: Sequence[str | None] | None = None, steps: int | None = None,
               seed: int | None = None, kind: str = "style", class_word: str | None = None,
               webhook: str | None = None, webhook_events_filter: Sequence[str] | None = None,
               idempotency_key: str | None = None) -> StyleCreated:
        """Upload a style's reference image(s) (or, with `kind="subject"` and a `class_word`, a subject's photos)
        and queue its training. `captions`: one per image, in order (None or "" = the StyleDrop prompt). A new
        `Idempotency-Key` is made unless given; the same key with the same upload answers the same style
        (`replayed`)."""
        many = images if isinstance(images, Sequence) and not isinstance(images, str | bytes) else [images]
        read = [_read_file(i) for i in many]
        files = [("image", (name, data, "application/octet-stream")) for name, data in read]
        form: dict[str, str | builtins.list[str]] = {k: _form_value(v) for k, v in _clean({
            "descriptor": descriptor, "content": content, "steps": steps, "seed": seed, "kind": kind,
            "class_word": class_word, "webhook": webhook}).items()}
        if captions:  # repeated fields, in the images' order
            form["caption"] = [c or "" for c in captions]
        if webhook_events_filter:
            form["webhook_events_filter"] = builtins.list(webhook_events_filter)
        response = self._client.request(
            "POST", "/v1/styles", data=form, files=files,
            headers={"Idempotency-Key": idempotency_key or str(uuid.uuid4())})
        body = response.json()
        return StyleCreated(style=Style.parse(body["style"]), job=Job.parse(body["job"]),
                            replayed=response.status_code == 200)

    def get(self, style_id: str) -> Style:
        return Style.parse(self._client.get_json(f"/v1/styles/{style_id}"))

    def list(self, *, limit: int | None = None) -> Page[Style]:
        """Your styles, a page at a time (iterate over the page for all of them)."""
        return self._client.page("/v1/styles", Style.parse, {"limit": limit})

    def delete(self, style_id: str) -> None:
        """Soft-delete the style; its queued or running job is cancelled."""
        self._client.request("DELETE", f"/v1/styles/{style_id}")

    def image(self, style_id: str, n: int = 0) -> bytes:
        """Reference image `n` (0-based, upload order) as PNG bytes."""
        return self._client.get_bytes(f"/v1/styles/{style_id}/images/{n}")

    def train_again(self, style_id: str, *, steps: int | None = None, seed: int | None = None) -> Job:
        """Train the style again from its stored images (after a cancel, a failure or a deleted adapter)."""
        return Job.parse(self._client.request("POST", f"/v1/styles/{style_id}/jobs",
                                              json_body=_clean({"steps": steps, "seed": seed})).json())

    def versions(self, style_id: str) -> builtins.list[Version]:
        """The style's adapter versions, v1 first, with their CLIP scores and which is the default."""
        return builtins.list(self._client.page(f"/v1/styles/{style_id}/versions", Version.parse))  # every page

    def set_default_version(self, style_id: str, version: int) -> Style:
        """The version a generation naming only the style uses."""
        return Style.parse(self._client.request("PATCH", f"/v1/styles/{style_id}",
                                                json_body={"default_version": version}).json())


class Jobs(_Resource):
    """Training jobs: read, wait, stream events, cancel."""

    def get(self, job_id: str) -> Job:
        return Job.parse(self._client.get_json(f"/v1/jobs/{job_id}"))

    def list(self, *, state: str | None = None, limit: int | None = None) -> Page[Job]:
        """Your jobs, newest first (optionally only those in `state`)."""
        return self._client.page("/v1/jobs", Job.parse, {"state": state, "limit": limit})

    def cancel(self, job_id: str) -> Job:
        """queued → cancelled at once; running → cancelling until the worker stops; a final job raises
        `ConflictError` (`job_final`)."""
        return Job.parse(self._client.request("POST", f"/v1/jobs/{job_id}/cancel").json())

    def wait(self, job_id: str, *, timeout: float | None = 600.0, poll_interval: float = 1.0) -> Job:
        """Poll until the job is final and return it (whatever its state: check `succeeded`, `error`). A
        `Retry-After` on the answer sets the pace; otherwise every `poll_interval` seconds. Raises
        `WaitTimeoutError` (with the last job seen) after `timeout` seconds; None waits as long as it takes."""
        return _poll(lambda: self._client.request("GET", f"/v1/jobs/{job_id}"), Job.parse,
                     timeout=timeout, poll_interval=poll_interval, what=f"job {job_id}",
                     max_pause=self._client.max_retry_wait)

    def events(self, job_id: str, *, after: int = 0, limit: int | None = None) -> Page[JobEvent]:
        """The job's events so far, oldest first, after event id `after` (iterate for all of them)."""
        return self._client.page(f"/v1/jobs/{job_id}/events", JobEvent.parse, {"after": after or None,
                                                                               "limit": limit})

    def stream(self, job_id: str, *, after: int = 0) -> Iterator[JobEvent]:
        """The job's events as they happen (server-sent events), from after event `after`, until the job is final.
        A dropped connection is resumed from the last event seen (`Last-Event-ID`), up to `max_retries` times in
        a row."""
        client = self._client
        last, failures, delay = after, 0, 1.0
        timeout = httpx.Timeout(client.timeout, read=max(client.timeout, STREAM_READ_TIMEOUT))
        while True:
            headers = {"Accept": "text/event-stream"}
            if last:
                headers["Last-Event-ID"] = str(last)
            try:
                with contextlib.closing(client.request("GET", f"/v1/jobs/{job_id}/events", headers=headers,
                                                       timeout=timeout, stream=True)) as response:
                    for sse in parse_sse(response.iter_lines()):
                        if sse.retry is not None:
                            delay = sse.retry / 1000
                        if sse.event == "end":
                            _end_of_stream(sse.data, response)
                            return
                        if not sse.data:
                            continue
                        event = JobEvent.parse(json.loads(sse.data))
                        last, failures = max(last, event.id), 0
                        yield event
            except (httpx.TransportError, APIConnectionError) as exc:
                failures += 1
                if failures > client.max_retries:
                    raise APIConnectionError(f"the event stream of job {job_id} kept dropping: {exc!r}") from exc
            else:  # closed without its `end` event: a restarted server or a proxy's idle timeout
                failures += 1
                if failures > client.max_retries:
                    raise APIConnectionError(f"the event stream of job {job_id} ended before the job did")
            _sleep(delay)

    def preview(self, job_id: str, n: int) -> bytes:
        """The job's n-th (0-based) preview image as PNG bytes."""
        return self._client.get_bytes(f"/v1/jobs/{job_id}/previews/{n}")


def _end_of_stream(data: str, response: httpx.Response) -> None:
    """The stream's `end` event: the job is final, or the key stopped being valid (`reason`)."""
    try:
        body = json.loads(data) if data else {}
    except ValueError:
        body = {}
    reason = body.get("reason") if isinstance(body, dict) else None
    if reason:
        raise AuthenticationError(401, {"code": reason, "detail": "the event stream ended: the key is no longer "
                                        "valid"}, method="GET", url=str(response.request.url))


def _poll(fetch: Callable[[], httpx.Response], parse: Callable[[Mapping[str, Any]], T], *, timeout: float | None,
          poll_interval: float, what: str, max_pause: float) -> T:
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        response = fetch()
        item = parse(response.json())
        if getattr(item, "done", False):
            return item
        pause = parse_retry_after(response.headers.get("retry-after"))
        pause = poll_interval if pause is None else pause
        if deadline is not None:
            left = deadline - time.monotonic()
            if left <= 0:
                raise WaitTimeoutError(f"{what} did not finish within {timeout} s", last=item)
            pause = min(pause, left)
        _sleep(min(max(pause, 0.05), max_pause))


class Generations(_Resource):
    """Generations: create (optionally waiting), wait, cancel, images."""

    def create(self, prompt: str, *, adapter_id: str | None = None, style_id: str | None = None,
               version: int | None = None, subject_adapter_id: str | None = None,
               subject_weight: float | None = None, negative_prompt: str | None = None,
               style_strength: float | None = None, guidance_scale: float | None = None,
               text_guidance: float | None = None, steps: int | None = None, seed: int | None = None,
               num_images: int | None = None, init_image: FileInput | None = None, mask: FileInput | None = None,
               strength: float | None = None, webhook: str | None = None,
               webhook_events_filter: Sequence[str] | None = None, wait: float | None = None,
               idempotency_key: str | None = None, **fields: Any) -> Generation:
        """Queue a generation with a style adapter (`adapter_id`, or `style_id` [+ `version`]) or the base model.
        `init_image` (+ `strength`) makes it image-to-image, `init_image` + `mask` inpainting. `wait`: block up
        to that many seconds for the result on the server (then `done` tells whether it finished). A new
        `Idempotency-Key` is made unless given. `fields`: settings this client does not name yet."""
        body = _clean({
            "prompt": prompt, "adapter_id": adapter_id, "style_id": style_id, "version": version,
            "subject_adapter_id": subject_adapter_id, "subject_weight": subject_weight,
            "negative_prompt": negative_prompt, "style_strength": style_strength, "guidance_scale": guidance_scale,
            "text_guidance": text_guidance, "steps": steps, "seed": seed, "num_images": num_images,
            "strength": strength, "webhook": webhook,
            "webhook_events_filter": list(webhook_events_filter) if webhook_events_filter else None, **fields})
        headers = {"Idempotency-Key": idempotency_key or str(uuid.uuid4())}
        params = {"wait": wait} if wait else None
        timeout = self._client.timeout + (wait or 0)
        if init_image is None and mask is None:
            response = self._client.request("POST", "/v1/generations", json_body=body, params=params,
                                            headers=headers, timeout=timeout)
        else:
            files = [(name, (*_read_file(f), "application/octet-stream"))
                     for name, f in (("init_image", init_image), ("mask", mask)) if f is not None]
            response = self._client.request(
                "POST", "/v1/generations", data={k: _form_value(v) for k, v in body.items()}, files=files,
                params=params, headers=headers, timeout=timeout)
        return Generation.parse(response.json())

    def get(self, generation_id: str) -> Generation:
        return Generation.parse(self._client.get_json(f"/v1/generations/{generation_id}"))

    def list(self, *, limit: int | None = None) -> Page[Generation]:
        """Your generations, newest first (iterate over the page for all of them)."""
        return self._client.page("/v1/generations", Generation.parse, {"limit": limit})

    def wait(self, generation_id: str, *, timeout: float | None = 300.0, poll_interval: float = 1.0) -> Generation:
        """Poll until the generation is final and return it (check `succeeded`, `error`): at the answer's
        `Retry-After` when it has one, else every `poll_interval` seconds. Raises `WaitTimeoutError` after
        `timeout` seconds."""
        return _poll(lambda: self._client.request("GET", f"/v1/generations/{generation_id}"), Generation.parse,
                     timeout=timeout, poll_interval=poll_interval, what=f"generation {generation_id}",
                     max_pause=self._client.max_retry_wait)

    def cancel(self, generation_id: str) -> Generation:
        """A queued or running generation ends `failed` with `cancelled_on_request`; a finished one raises
        `ConflictError` (`generation_final`)."""
        return Generation.parse(self._client.request("POST", f"/v1/generations/{generation_id}/cancel").json())

    def delete(self, generation_id: str) -> None:
        """Delete a finished generation and its images."""
        self._client.request("DELETE", f"/v1/generations/{generation_id}")

    def image(self, generation_id: str, n: int = 0) -> bytes:
        """Image `n` (0-based) of a generation, as PNG bytes."""
        return self._client.get_bytes(f"/v1/generations/{generation_id}/images/{n}")

    def images(self, generation: Generation | str) -> builtins.list[bytes]:
        """Every image of a finished generation, as PNG bytes."""
        gen = self.get(generation) if isinstance(generation, str) else generation
        return [self._client.get_bytes(url) for url in gen.image_urls]


class Rounds(_Resource):
    """StyleDrop's feedback rounds: samples to pick from, then a human or automatic round (the style's next
    version)."""

    def samples(self, style_id: str, *, version: int | None = None, prompts: int | None = None,
                images_per_prompt: int | None = None, steps: int | None = None,
                seed: int | None = None) -> builtins.list[Generation]:
        """Queue one generation per feedback prompt with the style's default version (or `version`)."""
        body = _clean({"version": version, "prompts": prompts, "images_per_prompt": images_per_prompt,
                       "steps": steps, "seed": seed})
        response = self._client.request("POST", f"/v1/styles/{style_id}/samples", json_body=body)
        return [Generation.parse(g) for g in response.json()["items"]]  # the set, in feedback-prompt order

    def human(self, style_id: str, selection: Sequence[tuple[str, int]], *, steps: int | None = None,
              seed: int | None = None) -> Job:
        """Train the next version on the picked images: (generation id, image index) pairs."""
        picks = [{"generation_id": gen_id, "index": index} for gen_id, index in selection]
        return self._create(style_id, {"mode": "human", "selection": picks, "steps": steps, "seed": seed})

    def automatic(self, style_id: str, *, prompts: int | None = None, per_prompt: int | None = None,
                  steps: int | None = None, seed: int | None = None) -> Job:
        """Let the worker render the default version over the feedback prompts (`per_prompt` candidates each),
        keep the best per prompt by CLIP score, and train the next version on them."""
        return self._create(style_id, {"mode": "automatic", "prompts": prompts, "per_prompt": per_prompt,
                                       "steps": steps, "seed": seed})

    def _create(self, style_id: str, body: dict[str, Any]) -> Job:
        return Job.parse(self._client.request("POST", f"/v1/styles/{style_id}/rounds", json_body=_clean(body)).json())


class Adapters(_Resource):
    """Trained adapters: read, download, delete."""

    def get(self, adapter_id: str) -> Adapter:
        return Adapter.parse(self._client.get_json(f"/v1/adapters/{adapter_id}"))

    def list(self, *, limit: int | None = None) -> Page[Adapter]:
        return self._client.page("/v1/adapters", Adapter.parse, {"limit": limit})

    def delete(self, adapter_id: str) -> None:
        self._client.request("DELETE", f"/v1/adapters/{adapter_id}")

    def download(self, adapter_id: str, path: str | os.PathLike[str]) -> Path:
        """Write the adapter's safetensors file to `path` (a folder: its own file name there), checked against
        its sha256 and moved into place whole: `path` is the complete file or untouched, never half-written."""
        target = Path(path)
        with contextlib.closing(self._client.request("GET", f"/v1/adapters/{adapter_id}/file",
                                                     headers={"Accept": "*/*"}, stream=True)) as response:
            if target.is_dir():
                target = target / _attachment_name(response, f"{adapter_id}.safetensors")
            expected = response.headers.get("x-content-sha256")
            digest = hashlib.sha256()
            tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex}.part")
            try:
                with tmp.open("wb") as out:
                    for chunk in response.iter_bytes():
                        digest.update(chunk)
                        out.write(chunk)
                    out.flush()
                    os.fsync(out.fileno())
                if expected and digest.hexdigest() != expected.lower():
                    raise IntegrityError(f"adapter {adapter_id}: sha256 {digest.hexdigest()} does not match the "
                                         f"recorded {expected}")
                os.replace(tmp, target)
            finally:
                tmp.unlink(missing_ok=True)
        return target


def _attachment_name(response: httpx.Response, default: str) -> str:
    """The file name of a `Content-Disposition: attachment; filename="..."`, reduced to a bare name."""
    disposition = response.headers.get("content-disposition", "")
    for part in disposition.split(";"):
        key, _, value = part.strip().partition("=")
        if key.lower() == "filename" and value:
            name = Path(value.strip().strip('"')).name
            if name and name not in (".", ".."):
                return name
    return default



WEBHOOK_TOLERANCE = 300  # seconds a delivery's timestamp may be off: the Standard Webhooks libraries' default


class Webhooks(_Resource):
    """The signing secret of your webhook deliveries, and checking a delivery's signature."""

    def secret(self) -> str:
        """Your `whsec_...` secret."""
        return str(self._client.get_json("/v1/webhooks/secret")["secret"])

    def rotate_secret(self) -> str:
        """Replace the secret; deliveries from now on (retries included) are signed with the new one."""
        return str(self._client.request("POST", "/v1/webhooks/secret/rotate").json()["secret"])

    @staticmethod
    def verify(secret: str, headers: Mapping[str, str], body: bytes | str, *,
               tolerance: float = WEBHOOK_TOLERANCE, now: float | None = None) -> bool:
        """Whether a delivery is genuine, as Standard Webhooks specifies (https://www.standardwebhooks.com/):
        one of `webhook-signature`'s `v1,<base64>` values is HMAC-SHA256 of "{webhook-id}.{webhook-timestamp}.{raw
        body}" under the secret's key, and the timestamp is within `tolerance` seconds of now. `headers` as
        received (any case); `body` the raw bytes, not re-serialised JSON."""
        lower = {k.lower(): v for k, v in headers.items()}
        msg_id, stamp, signatures = (lower.get(h, "") for h in ("webhook-id", "webhook-timestamp",
                                                                  "webhook-signature"))
        if not (msg_id and stamp.isascii() and stamp.isdigit() and signatures):
            return False
        if abs((time.time() if now is None else now) - int(stamp)) > tolerance:
            return False
        try:
            key = base64.b64decode(secret.removeprefix("whsec_"), validate=True)
        except (binascii.Error, ValueError):
            return False
        raw = body.encode() if isinstance(body, str) else body
        expected = base64.b64encode(hmac.new(key, msg_id.encode() + b"." + stamp.encode() + b"." + raw,
                                             hashlib.sha256).digest()).decode()
        return any(version == "v1" and hmac.compare_digest(value, expected)
                   for version, _, value in (s.partition(",") for s in signatures.split()))
