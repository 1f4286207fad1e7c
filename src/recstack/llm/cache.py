"""Every LLM call cached by (model, operation, prompt, parameters), so a re-run is free and identical.

`CachedLM(backend, path)` wraps any backend of `recstack.llm.backends` with the same four operations.
Answers live in one SQLite file (WAL mode: an interrupted run loses at most the call in flight, and
the next run resumes from what was stored). The key is the sha256 of the backend's fingerprint (the
model's weights or URL), the operation and its arguments; the value is the answer as JSON, floats
kept exactly (JSON round-trips float64), with the seconds and tokens the call cost when it ran.
`usage` counts the calls that ran and those the cache answered; `usage.seconds` is the time spent
in the model, `usage.cached_seconds` (and `cached_tokens_in`/`_out`) what the served answers cost
when they ran, i.e. what the cache saved.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from recstack.llm.backends import Generation, LanguageModel, Messages, Usage


class CachedLM:
    """`backend` behind a persistent answer cache at `path` (a SQLite file, created when missing)."""

    def __init__(self, backend: LanguageModel, path: str | os.PathLike) -> None:
        self.backend = backend
        self.name = backend.name
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        # no fsync per answer: a crash may lose the last answers (asked again next run), never corrupt the file
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("CREATE TABLE IF NOT EXISTS answers (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
        self._lock = threading.Lock()
        self.usage = Usage()

    def fingerprint(self) -> str:
        return self.backend.fingerprint()

    def render(self, messages: Messages) -> str:
        return self.backend.render(messages)

    def count_tokens(self, text: str) -> int:
        found = self._lookup("count_tokens", text)
        if found is not None:
            return int(found["value"])
        value = self.backend.count_tokens(text)
        self._store("count_tokens", text, {"value": value, "seconds": 0.0, "tokens_in": 0, "tokens_out": 0})
        return value

    def _key(self, operation: str, payload: Any) -> str:
        text = json.dumps([self.backend.fingerprint(), operation, payload], sort_keys=True, ensure_ascii=False)
        return hashlib.sha256(text.encode()).hexdigest()

    def _lookup(self, operation: str, payload: Any) -> dict[str, Any] | None:
        with self._lock:
            row = self._db.execute("SELECT value FROM answers WHERE key = ?", (self._key(operation, payload),)).fetchone()
        if row is None:
            return None
        answer = json.loads(row[0])
        self.usage.served(answer.get("tokens_in", 0), answer.get("tokens_out", 0), answer.get("seconds", 0.0))
        return answer

    def _store(self, operation: str, payload: Any, answer: dict[str, Any]) -> None:
        with self._lock:
            self._db.execute("INSERT OR REPLACE INTO answers (key, value) VALUES (?, ?)",
                             (self._key(operation, payload), json.dumps(answer)))

    def _ran(self, before: Usage) -> tuple[int, int, float]:
        after = self.backend.usage
        return (after.tokens_in - before.tokens_in, after.tokens_out - before.tokens_out, after.seconds - before.seconds)

    def generate(self, prompts: Sequence[str], max_new_tokens: int = 16) -> list[Generation]:
        out: list[Generation | None] = []
        missing: list[int] = []
        for i, prompt in enumerate(prompts):
            found = self._lookup("generate", [prompt, int(max_new_tokens)])
            out.append(None if found is None else Generation(found["text"], found["tokens_in"], found["tokens_out"]))
            if found is None:
                missing.append(i)
        if missing:
            before = Usage(**self.backend.usage.as_dict())
            made = self.backend.generate([prompts[i] for i in missing], max_new_tokens)
            _, _, seconds = self._ran(before)
            for i, generation in zip(missing, made):
                share = seconds / len(missing)
                self._store("generate", [prompts[i], int(max_new_tokens)],
                            {"text": generation.text, "tokens_in": generation.tokens_in,
                             "tokens_out": generation.tokens_out, "seconds": share})
                self.usage.add(generation.tokens_in, generation.tokens_out, share)
                out[i] = generation
        return out  # type: ignore[return-value]

    def _scored(self, operation: str, prefix: str, continuations: Sequence[str]) -> np.ndarray:
        payload = [prefix, list(continuations)]
        found = self._lookup(operation, payload)
        if found is not None:
            return np.asarray(found["value"], dtype=np.float64)
        before = Usage(**self.backend.usage.as_dict())
        began = time.perf_counter()
        scores = getattr(self.backend, operation)(prefix, continuations)
        tokens_in, tokens_out, _ = self._ran(before)
        seconds = time.perf_counter() - began
        self._store(operation, payload, {"value": [float(s) for s in scores], "seconds": seconds,
                                         "tokens_in": tokens_in, "tokens_out": tokens_out})
        self.usage.add(tokens_in, tokens_out, seconds)
        return np.asarray(scores, dtype=np.float64)

    def continuation_logprobs(self, prefix: str, continuations: Sequence[str]) -> np.ndarray:
        return self._scored("continuation_logprobs", prefix, continuations)

    def option_logprobs(self, prompt: str, options: Sequence[str]) -> np.ndarray:
        return self._scored("option_logprobs", prompt, options)

    def close(self) -> None:
        with self._lock:
            self._db.close()
