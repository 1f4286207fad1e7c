"""LoRA fine-tuning of a local LM on (prompt, answer) pairs (Hu et al., "LoRA: Low-Rank Adaptation of Large
Language Models", ICLR 2022), with peft.

The loss is the cross-entropy of the answer's tokens only (the prompt's positions are masked with -100),
as in TALLRec's and Kang et al.'s fine-tuning. Adapters go on the attention's query and value projections
(TALLRec's choice) of a copy of the model, so the base model stays as it was. After training the adapters
are merged into the copy's weights, so the tuned model scores exactly as fast as the base; it is returned
as a new `LocalLM` whose fingerprint includes a digest of the merged weights' change, so the answer cache
never mixes the base's answers with the tuned one's.

With a `store` folder the trained adapters are kept, under a key made of the base model's fingerprint,
the settings and every (prompt, answer) pair: `<store>/<key>/adapters.npz` (the LoRA A and B matrices,
float32) and `tuning.json` (what the training did). The same tuning asked for again loads them instead of
training: merged, they give the same weights bit for bit, hence the same fingerprint, so the answer cache
serves the re-run too.
"""

from __future__ import annotations

import copy
import hashlib
import json
import threading
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from recstack.fs import atomic_directory
from recstack.llm.backends import LocalLM, Usage
from recstack.llm.weights import LLMError

ADAPTERS, TUNING = "adapters.npz", "tuning.json"


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
    key: str = ""  # the stored adapters' folder name (`tuning_key`)
    reused: bool = False  # loaded from the store: `seconds` and the losses are the original training's

    def to_dict(self) -> dict:
        return {"n_examples": self.n_examples, "settings": asdict(self.settings), "loss_per_epoch": self.loss_per_epoch,
                "seconds": self.seconds, "trainable_parameters": self.trainable_parameters, "key": self.key}


def tuning_key(base: LocalLM, prompts: Sequence[str], answers: Sequence[str], settings: LoRASettings) -> str:
    """What decides the tuned weights: the base model, the settings and the training pairs in order."""
    digest = hashlib.sha256(json.dumps({"base": base.fingerprint(), "settings": asdict(settings)},
                                       sort_keys=True).encode())
    for prompt, answer in zip(prompts, answers):
        digest.update(json.dumps([prompt, answer]).encode())
    return digest.hexdigest()[:24]


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
                  settings: LoRASettings = LoRASettings(), *, store: str | Path | None = None
                  ) -> tuple[LocalLM, TuningRecord]:
    """A copy of `base` with LoRA adapters trained on the pairs and merged in, and what the training did;
    with `store`, adapters trained before for the same key are loaded instead (see the module doc)."""
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
    key = tuning_key(base, prompts, answers, settings)
    record = TuningRecord(len(pairs), settings, trainable_parameters=int(sum(p.numel() for p in trainable)), key=key)
    stored = Path(store) / key if store is not None else None
    if stored is not None and (stored / ADAPTERS).exists():
        _load_adapters(tuned, stored, record)
    else:
        _train(tuned, pairs, optimiser, rng, settings, record, base._device)
        if stored is not None:
            with atomic_directory(stored) as tmp:
                np.savez(tmp / ADAPTERS, **{name: p.detach().cpu().numpy() for name, p in tuned.named_parameters()
                                            if p.requires_grad})
                (tmp / TUNING).write_text(json.dumps(record.to_dict(), indent=1))
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


def _train(tuned, pairs, optimiser, rng, settings: LoRASettings, record: TuningRecord, device) -> None:
    """The adapters' training: answer-token cross-entropy, AdamW, shuffled batches, one loss per epoch."""
    import torch

    began = time.perf_counter()
    tuned.train()
    for _ in range(settings.epochs):
        order = rng.permutation(len(pairs))
        total, count = 0.0, 0
        for start in range(0, len(order), settings.batch_size):
            batch = [pairs[i] for i in order[start:start + settings.batch_size]]
            width = max(len(p) + len(a) for p, a in batch)
            tokens = torch.tensor([p + a + [0] * (width - len(p) - len(a)) for p, a in batch], device=device)
            mask = torch.tensor([[1] * (len(p) + len(a)) + [0] * (width - len(p) - len(a)) for p, a in batch],
                                device=device)
            # the answer's tokens are the targets; the prompt and the padding are not
            labels = torch.tensor([[-100] * len(p) + a + [-100] * (width - len(p) - len(a)) for p, a in batch],
                                  device=device)
            loss = tuned(input_ids=tokens, attention_mask=mask, labels=labels).loss
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            total += float(loss.detach()) * len(batch)
            count += len(batch)
        record.loss_per_epoch.append(total / count)
    record.seconds = time.perf_counter() - began


def _load_adapters(tuned, stored: Path, record: TuningRecord) -> None:
    """Put the stored A and B matrices into `tuned`'s adapters; refuse a store that does not fit them."""
    import torch

    try:
        with np.load(stored / ADAPTERS) as arrays:
            saved = {name: arrays[name] for name in arrays.files}
        done = json.loads((stored / TUNING).read_text())
    except (OSError, ValueError, EOFError) as error:
        raise LLMError(f"the stored LoRA adapters in {stored} cannot be read ({error}); delete that folder to train "
                       "them again") from None
    wanted = {name: p for name, p in tuned.named_parameters() if p.requires_grad}
    if set(saved) != set(wanted) or any(saved[n].shape != tuple(p.shape) for n, p in wanted.items()):
        raise LLMError(f"the stored LoRA adapters in {stored} do not fit this model's adapters; delete that folder "
                       "to train them again")
    with torch.no_grad():
        for name, parameter in wanted.items():
            parameter.copy_(torch.from_numpy(saved[name]))
    record.loss_per_epoch, record.seconds, record.reused = list(done["loss_per_epoch"]), float(done["seconds"]), True
