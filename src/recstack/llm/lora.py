"""LoRA fine-tuning of a local LM on (prompt, answer) pairs (Hu et al., "LoRA: Low-Rank Adaptation of Large
Language Models", ICLR 2022), with peft.

The loss is the cross-entropy of the answer's tokens only (the prompt's positions are masked with -100),
as in TALLRec's and Kang et al.'s fine-tuning. Adapters go on the attention's query and value projections
(TALLRec's choice) of a copy of the model, so the base model stays as it was. After training the adapters
are merged into the copy's weights, so the tuned model scores exactly as fast as the base; it is returned
as a new `LocalLM` whose fingerprint includes a digest of the merged weights' change, so the answer cache
never mixes the base's answers with the tuned one's.
"""

from __future__ import annotations

import copy
import hashlib
import threading
import time
import warnings
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from recstack.llm.backends import LocalLM, Usage
from recstack.llm.weights import LLMError


@dataclass(frozen=True)
class LoRASettings:
    rank: int = 8
    alpha: int = 16
    dropout: float = 0.05
    learning_rate: float = 3e-4
    epochs: int = 3
    batch_size: int = 8
    targets: tuple[str, ...] = ("q_proj", "v_proj")
    seed: int = 0


@dataclass
class TuningRecord:
    n_examples: int
    settings: LoRASettings
    loss_per_epoch: list[float] = field(default_factory=list)
    seconds: float = 0.0
    trainable_parameters: int = 0


def draw_examples(train, n: int, rng: np.random.Generator) -> list[tuple[int, int]]:
    """`n` (user, position) pairs from `train` (a log with ratings), each a rated event with at least one
    event of the same user before it: the event is the example's target, those before it its history.
    Drawn uniformly over such events, without replacement."""
    counts = np.diff(train.indptr)
    eligible_rows = np.concatenate([np.arange(train.indptr[u] + 1, train.indptr[u + 1])
                                    for u in np.flatnonzero(counts > 1)]) if (counts > 1).any() else np.array([], int)
    if len(eligible_rows) < n:
        raise LLMError(f"{n} fine-tuning examples asked for, but the training part has only {len(eligible_rows)} "
                       "events with history before them; ask for fewer")
    rows = np.sort(rng.choice(eligible_rows, size=n, replace=False))
    return [(int(train.user[r]), int(r - train.indptr[train.user[r]])) for r in rows]


def finetune_lora(base: LocalLM, prompts: Sequence[str], answers: Sequence[str],
                  settings: LoRASettings = LoRASettings()) -> tuple[LocalLM, TuningRecord]:
    """A copy of `base` with LoRA adapters trained on the pairs and merged in, and what the training did."""
    if len(prompts) != len(answers) or not prompts:
        raise LLMError(f"LoRA fine-tuning needs one answer per prompt and at least one pair; got {len(prompts)} "
                       f"prompts and {len(answers)} answers")
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError:
        raise LLMError("LoRA fine-tuning needs peft; install it with: pip install 'recstack[llm]'") from None
    import torch

    model, tokenizer = base._load()
    torch.manual_seed(settings.seed)
    rng = np.random.default_rng(settings.seed)
    with warnings.catch_warnings():  # peft asks transformers a question it has renamed; not the user's concern
        warnings.simplefilter("ignore", FutureWarning)
        tuned = get_peft_model(copy.deepcopy(model), LoraConfig(
            r=settings.rank, lora_alpha=settings.alpha, lora_dropout=settings.dropout,
            target_modules=list(settings.targets), task_type="CAUSAL_LM"))
    trainable = [p for p in tuned.parameters() if p.requires_grad]
    optimiser = torch.optim.AdamW(trainable, lr=settings.learning_rate)
    pairs = [(base._encode(p), base._encode(a)) for p, a in zip(prompts, answers)]
    for ids, answer in pairs:
        if not answer:
            raise LLMError("an empty answer cannot be learnt; every pair needs an answer text")
        base._check_length(len(ids) + len(answer), "a fine-tuning prompt and its answer")
    record = TuningRecord(len(pairs), settings, trainable_parameters=int(sum(p.numel() for p in trainable)))
    began = time.perf_counter()
    tuned.train()
    for _ in range(settings.epochs):
        order = rng.permutation(len(pairs))
        total, count = 0.0, 0
        for start in range(0, len(order), settings.batch_size):
            batch = [pairs[i] for i in order[start:start + settings.batch_size]]
            width = max(len(p) + len(a) for p, a in batch)
            tokens = torch.tensor([p + a + [0] * (width - len(p) - len(a)) for p, a in batch], device=base._device)
            mask = torch.tensor([[1] * (len(p) + len(a)) + [0] * (width - len(p) - len(a)) for p, a in batch],
                                device=base._device)
            # the answer's tokens are the targets; the prompt and the padding are not
            labels = torch.tensor([[-100] * len(p) + a + [-100] * (width - len(p) - len(a)) for p, a in batch],
                                  device=base._device)
            loss = tuned(input_ids=tokens, attention_mask=mask, labels=labels).loss
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            total += float(loss.detach()) * len(batch)
            count += len(batch)
        record.loss_per_epoch.append(total / count)
    record.seconds = time.perf_counter() - began
    merged = tuned.merge_and_unload().eval()
    digest = hashlib.sha256()
    with torch.no_grad():
        for (name, after), before in zip(merged.state_dict().items(), model.state_dict().values()):
            if not torch.equal(after, before):
                digest.update(name.encode())
                digest.update((after - before).float().cpu().numpy().tobytes())
    out = copy.copy(base)  # the tokenizer and the source are shared; the weights, lock and counters are its own
    out._model = merged
    out._lock = threading.Lock()
    out.usage = Usage()
    out.tuning = f"lora:{digest.hexdigest()[:24]}"
    return out, record
