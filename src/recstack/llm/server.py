"""`recstack llm-serve`: a local model behind the OpenAI-compatible completions API.

The same wire format as vLLM and llama.cpp's server, for what recstack's HTTP backend uses:
`GET /v1/models`, and `POST /v1/completions` with a prompt (or a list of prompts), greedy decoding
(`temperature` 0; a sampling request is refused rather than silently decoded greedily), `max_tokens`,
and `echo` + `logprobs` (up to 20 alternatives) for the prompt's own token log-probabilities, which is
how candidates are scored by likelihood. Why a server of our own: it puts any model the local backend
loads (including the GGUF files of the package index) behind the API without building llama.cpp,
and the HTTP backend's tests run against a real server process on loopback.
"""


import time
import uuid
from typing import Any

from recstack.llm.backends import LocalLM

MAX_LOGPROBS = 20  # vLLM's default cap


def create_app(model: LocalLM):
    from fastapi import FastAPI, HTTPException
    from fastapi.concurrency import run_in_threadpool
    from pydantic import BaseModel, ConfigDict, Field

    class CompletionRequest(BaseModel):
        model_config = ConfigDict(extra="ignore")  # OpenAI clients send fields this server does not use

        model: str | None = None
        prompt: str | list[str]
        max_tokens: int = Field(16, ge=0, le=4096)
        temperature: float = Field(1.0, ge=0.0)
        echo: bool = False
        logprobs: int | None = Field(None, ge=0, le=MAX_LOGPROBS)

    app = FastAPI(title="recstack llm-serve", version="1")

    @app.get("/health")
    def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/v1/models")
    def models() -> dict[str, Any]:
        return {"object": "list", "data": [{"id": model.name, "object": "model", "owned_by": "recstack"}]}

    def complete(request: CompletionRequest) -> dict[str, Any]:
        if request.model not in (None, model.name):
            raise HTTPException(404, f"model {request.model!r} is not served here; this server has {model.name!r}")
        if request.max_tokens > 0 and request.temperature > 0:
            raise HTTPException(400, "this server decodes greedily: send temperature 0 (sampling is not implemented)")
        prompts = [request.prompt] if isinstance(request.prompt, str) else list(request.prompt)
        if not prompts:
            raise HTTPException(400, "prompt is an empty list")
        choices, prompt_tokens, completion_tokens = [], 0, 0
        for index, prompt in enumerate(prompts):
            text, logprobs = "", None
            if request.max_tokens > 0:
                generation = model.generate([prompt], request.max_tokens)[0]
                text = generation.text
                completion_tokens += generation.tokens_out
            n_prompt = model.count_tokens(prompt)
            prompt_tokens += n_prompt
            if request.logprobs is not None:
                whole = model.token_logprobs(prompt + text, top=request.logprobs)
                if request.echo:
                    logprobs = whole
                else:  # the generated tokens only
                    keep = [i for i, offset in enumerate(whole["text_offset"]) if offset >= len(prompt)]
                    logprobs = {key: ([value[i] for i in keep] if isinstance(value, list) else value)
                                for key, value in whole.items()}
                    logprobs["text_offset"] = [offset - len(prompt) for offset in logprobs["text_offset"]]
            choices.append({"index": index, "text": (prompt + text) if request.echo else text,
                            "logprobs": logprobs, "finish_reason": "length"})
        return {"id": f"cmpl-{uuid.uuid4().hex[:24]}", "object": "text_completion", "created": int(time.time()),
                "model": model.name, "choices": choices,
                "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                          "total_tokens": prompt_tokens + completion_tokens}}

    @app.post("/v1/completions")
    async def completions(request: CompletionRequest) -> dict[str, Any]:
        try:
            return await run_in_threadpool(complete, request)
        except HTTPException:
            raise
        except Exception as exc:  # a prompt longer than the context, ...: the client's fault, said plainly
            from recstack.llm.weights import LLMError

            if isinstance(exc, LLMError):
                raise HTTPException(400, str(exc)) from None
            raise

    return app


def serve(model_name: str, *, host: str = "127.0.0.1", port: int = 8001, threads: int | None = None,
          log=print) -> None:
    """Load `model_name` (a named model or a path), then serve it until interrupted."""
    import torch
    import uvicorn

    if threads:
        torch.set_num_threads(int(threads))
    began = time.perf_counter()
    model = LocalLM(model_name)
    model.count_tokens("warm up")  # load the weights before the first request
    log(f"llm-serve: {model.name} loaded in {time.perf_counter() - began:.1f} s; "
        f"OpenAI-compatible API at http://{host}:{port}/v1")
    uvicorn.run(create_app(model), host=host, port=port, log_level="warning")
