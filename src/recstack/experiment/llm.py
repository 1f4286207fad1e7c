"""LLM experiments: `task: llm` configs, run top to bottom into a run directory with a report.

```yaml
task: llm
data: ml-100k
split: {method: leave_last, k: 1}
llm: {backend: local, model: smollm2}      # or {backend: openai, url: http://host:8000, model: NAME}
rating:                                    # Kang et al. 2023: zero-/few-shot against explicit MF
  users: 100
  methods: [{label: zero-shot, shots: 0}, {label: few-shot-3, shots: 3}]
rerank:                                    # the retriever's top n reordered by likelihood
  retriever: {name: ease}
  n: 20
  users: 100
```

The data is loaded, preprocessed (every rating kept) and split as a ranking experiment's is. A sample
of test users (seeded) is drawn once; every method is measured on the same users.
- `rating`: each sampled user's held-out ratings are predicted from their train + valid ratings
  (the prompt's history) by each LLM method (expected rating and parsed answer) and by the explicit
  baselines (`recstack.models.rating.BiasedMF`, fitted on train + valid): RMSE, MAE and AUC of
  rating >= 4.
- `rerank`: the retriever (any ranking model, fitted on train with validation) alone and with the
  LLM reordering its top `n`, by full ranking on the sampled users' test items (history masked,
  test users seen through train + valid); and the candidate protocol of the LLM papers: the held-out
  item among `candidates` - 1 sampled unseen items, HitRatio@1 and NDCG@5 of the retriever, the LLM
  and chance.
- `allmrec`: A-LLMRec (Kim et al., KDD 2024; `recstack.models.llm.allmrec`) beside its own frozen SASRec
  on the same candidate protocol, for users whose held-out item is warm and for those whose held-out
  item was made cold (removed from all training data; it enters the prompt through the text encoder).
Every LLM answer goes through the answer cache (`<cache>/llm/answers.sqlite`; `llm.cache: false`
to skip), so a re-run is free and identical, and an interrupted run resumes. LoRA adapters trained
by a run are kept beside it (`<cache>/llm/lora/<key>/`, `lora_store`) and loaded by a re-run with the
same base model, settings and examples instead of being trained again; each run directory also gets
a copy of the adapters it used (`lora/<key>/`). `manifest.json` holds the
LLM's calls, tokens and seconds (and those the cache answered); `samples.jsonl` the prompts and
answers of a few users. See docs/llm.md.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import Field, PositiveInt, field_validator, model_validator

from recstack.errors import RecstackError
from recstack.experiment.config import ModelEntry, PreprocessingConfig, SplitConfig, TaskConfig, _Strict

SAMPLES = "samples.jsonl"
N_SAMPLE_USERS = 5  # users whose prompts and answers are written to samples.jsonl


class LLMSection(_Strict):
    backend: Literal["local", "openai"] = "local"
    model: str = "smollm2"  # local: a named model or a path; openai: the served model's name
    url: str | None = None  # openai: the server's base URL (without /v1)
    template: str = "chatml"  # openai: how prompts are rendered (chatml, plain, or a tokenizer folder)
    threads: PositiveInt | None = None  # local: torch threads
    max_batch: PositiveInt = 32
    cache: bool | str = True  # True: <cache>/llm/answers.sqlite; a path: that SQLite file; False: no cache

    @model_validator(mode="after")
    def _url_for_openai(self) -> "LLMSection":
        if self.backend == "openai" and not self.url:
            raise ValueError("llm.backend openai needs llm.url, the server's base URL (e.g. http://127.0.0.1:8001)")
        if self.backend == "local" and self.url:
            raise ValueError("llm.url applies to backend: openai only")
        return self


class RatingMethod(_Strict):
    label: str
    shots: int = Field(0, ge=0, le=10)
    # Kang et al.'s fine-tuned variant: LoRA on this many of the training part's ratings (local backend)
    lora_examples: int = Field(0, ge=0)
    lora_epochs: PositiveInt = 2


class TALLRecSection(_Strict):
    """TALLRec: LoRA instruction tuning on Yes/No from few examples; AUC against the number of examples."""

    users: PositiveInt = 200
    examples: list[int] = Field(default_factory=lambda: [0, 16, 64, 256], min_length=1)
    epochs: PositiveInt = 3
    max_history: PositiveInt = 10


class RatingBaseline(_Strict):
    label: str
    factors: int = Field(32, ge=0)
    # several: each fitted on train and scored on the validation ratings, the best refitted on train + valid
    reg: float | list[float] = Field(default_factory=lambda: [0.02, 0.05, 0.1, 0.2, 0.5])
    iterations: PositiveInt = 15

    @field_validator("reg")
    @classmethod
    def _positive(cls, reg: float | list[float]) -> float | list[float]:
        values = reg if isinstance(reg, list) else [reg]
        if not values or any(v <= 0 for v in values):
            raise ValueError(f"reg must be positive (or a non-empty list of positive values), got {reg}")
        return reg


class RatingSection(_Strict):
    users: PositiveInt = 100
    max_history: int = Field(10, ge=0)
    answer_tokens: PositiveInt = 12  # a chat model often starts with a phrase before the digit
    methods: list[RatingMethod] = Field(default_factory=lambda: [RatingMethod(label="zero-shot", shots=0),
                                                                 RatingMethod(label="few-shot-3", shots=3)],
                                        min_length=1)
    baselines: list[RatingBaseline] = Field(default_factory=lambda: [RatingBaseline(label="mf"),
                                                                     RatingBaseline(label="bias", factors=0)])


class ListwiseSection(_Strict):
    """LLMRank's listwise prompt with candidate-order bootstrapping, on the first `users` sampled users."""

    n: int = Field(10, ge=2, le=100)
    bootstraps: int = Field(3, ge=1, le=20)
    users: PositiveInt = 50


class LLMRerankSection(_Strict):
    retriever: ModelEntry = Field(default_factory=lambda: ModelEntry(name="ease"))
    n: PositiveInt = 20
    users: PositiveInt = 100
    max_history: int = Field(20, ge=0)
    length_norm: bool = True
    candidates: int = Field(20, ge=2)  # the sampled-candidate protocol: 1 held-out item + candidates - 1
    ks: list[PositiveInt] = Field(default_factory=lambda: [10, 20], min_length=1)
    listwise: ListwiseSection | None = None


class ALLMRecSection(_Strict):
    """A-LLMRec (recstack.models.llm.allmrec): a frozen SASRec's embeddings as soft prompts of the frozen LLM;
    the held-out item among `candidates`, for warm users and for users whose held-out item is cold."""

    users: PositiveInt = 100  # test users, the first of the shared sample
    sasrec: dict[str, Any] = Field(default_factory=lambda: {"epochs": 20})  # recstack SASRec's settings
    stage1_epochs: PositiveInt = 10
    stage2_steps: PositiveInt = 50
    train_users: PositiveInt = 200  # users whose last history item is a stage-2 training target
    candidates: int = 20  # the held-out item + candidates - 1 sampled unseen items (training prompts too)
    max_history: PositiveInt = 10
    # the held-out items of this many of the section's users become cold: their events leave the training
    # data of SASRec and both stages, and they enter the prompt through the text encoder (0: none)
    cold_users: int = Field(30, ge=0)
    generate: bool = True  # also the paper's figure: the greedy answer matched against the candidate titles
    params: dict[str, Any] = Field(default_factory=dict)  # any other ALLMRecConfig field

    @field_validator("candidates")
    @classmethod
    def _two_or_more(cls, value: int) -> int:
        if value < 2:
            raise ValueError(f"allmrec.candidates must be at least 2 (the held-out item and one other), got {value}; "
                             "the paper's protocol uses 20")
        return value

    def model_params(self, seed: int) -> dict[str, Any]:
        return {"seed": seed, "sasrec": self.sasrec, "stage1_epochs": self.stage1_epochs,
                "stage2_steps": self.stage2_steps, "train_users": self.train_users, "candidates": self.candidates,
                "max_history": self.max_history, **self.params}


class LLMExperimentConfig(TaskConfig):
    """A `task: llm` experiment; see the module docstring."""

    task: Literal["llm"]
    preprocessing: PreprocessingConfig = Field(default_factory=lambda: PreprocessingConfig(threshold=None))
    split: SplitConfig = Field(default_factory=lambda: SplitConfig(method="leave_last", params={"k": 1}))
    llm: LLMSection = Field(default_factory=LLMSection)
    rating: RatingSection | None = None
    rerank: LLMRerankSection | None = None
    tallrec: TALLRecSection | None = None
    allmrec: ALLMRecSection | None = None

    @model_validator(mode="after")
    def _something_to_do(self) -> "LLMExperimentConfig":
        if self.rating is None and self.rerank is None and self.tallrec is None and self.allmrec is None:
            raise ValueError("an LLM experiment needs a 'rating', 'rerank', 'tallrec' or 'allmrec' section")
        if self.allmrec is not None:
            if self.llm.backend != "local":
                raise ValueError("allmrec needs llm.backend local: its soft prompts go into the model's weights "
                                 "on this machine, which a server cannot take")
            from recstack.models.llm.allmrec import ALLMRecConfig
            from recstack.models.protocol import make_config

            try:
                make_config(ALLMRecConfig, self.allmrec.model_params(self.seed))
            except RecstackError as exc:
                raise ValueError(f"allmrec: {exc}") from None
        tuned = (self.tallrec is not None and any(self.tallrec.examples)) or \
            (self.rating is not None and any(m.lora_examples for m in self.rating.methods))
        if tuned and self.llm.backend != "local":
            raise ValueError("LoRA fine-tuning (tallrec examples, rating lora_examples) needs llm.backend local: "
                             "the weights must be on this machine")
        if self.rerank is not None:
            from recstack.models import build

            try:
                build(self.rerank.retriever.name, self.rerank.retriever.params)
            except RecstackError as exc:
                raise ValueError(f"rerank.retriever ({self.rerank.retriever.display}): {exc}") from None
        if self.rating is not None:
            labels = [m.label for m in self.rating.methods] + [b.label for b in self.rating.baselines]
            repeated = sorted({label for label in labels if labels.count(label) > 1})
            if repeated:
                raise ValueError(f"rating: label {repeated[0]!r} is used twice")
        return self

    def ranking_config(self):
        """The ranking experiment whose data, preprocessing and split this one shares."""
        from recstack.experiment.config import ExperimentConfig

        entry = self.rerank.retriever if self.rerank is not None else ModelEntry(name="pop")
        return ExperimentConfig(data=self.data, cache_dir=self.cache_dir, preprocessing=self.preprocessing,
                                split=self.split, models=[entry], seed=self.seed, output_dir=self.output_dir)

    def check_devices(self, source: str | None = None) -> None:
        self.ranking_config().check_devices(source)

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude_none=True)


def is_llm(raw: Any) -> bool:
    return isinstance(raw, LLMExperimentConfig) or (isinstance(raw, dict) and raw.get("task") == "llm")


def parse_llm_config(raw: dict[str, Any] | LLMExperimentConfig, source: str = "config") -> LLMExperimentConfig:
    return LLMExperimentConfig.parse(raw, source)


# ---- the run ------------------------------------------------------------------------------------

@dataclass
class LLMRunResult:
    run_dir: Path
    metrics: dict[str, Any]
    config: LLMExperimentConfig


def build_language_model(section: LLMSection, cache_dir: str | None):
    """The configured backend, behind the answer cache unless `cache: false`."""
    from recstack.llm import CachedLM, LocalLM, OpenAICompatibleLM

    if section.backend == "local":
        if section.threads:
            import torch

            torch.set_num_threads(int(section.threads))
        lm = LocalLM(section.model, max_batch=section.max_batch, cache_dir=cache_dir)
    else:
        lm = OpenAICompatibleLM(section.url, section.model, template=section.template)  # type: ignore[arg-type]
    if section.cache is False:
        return lm
    if isinstance(section.cache, str):
        return CachedLM(lm, Path(section.cache).expanduser())
    from recstack.data.datasets import data_home

    return CachedLM(lm, data_home(cache_dir) / "llm" / "answers.sqlite")


def _auc(labels: np.ndarray, scores: np.ndarray) -> float | None:
    from recstack.evaluate.ctr import auc

    return float(auc(labels, scores)) if 0 < labels.sum() < len(labels) else None


def _rating_row(truth: np.ndarray, predicted: np.ndarray) -> dict[str, Any]:
    error = predicted - truth
    return {"RMSE": float(np.sqrt(np.mean(error ** 2))), "MAE": float(np.mean(np.abs(error))),
            "AUC": _auc((truth >= 4).astype(np.int8), predicted), "n": int(len(truth))}


def _usage_since(lm, before: dict[str, Any], n_users: int) -> dict[str, Any]:
    """The LLM cost of a section since `before`: the calls that ran and those the cache served, and
    per user the cost of the method (answers served from the cache count at what they cost when
    they ran, so a cached re-run reports the same cost columns, not zero)."""
    now = lm.usage.as_dict()
    spent = {key: now[key] - before[key] for key in now}
    users = max(n_users, 1)
    spent["seconds_per_user"] = round((spent["seconds"] + spent["cached_seconds"]) / users, 4)
    spent["tokens_in_per_user"] = round((spent["tokens_in"] + spent["cached_tokens_in"]) / users, 1)
    spent["tokens_out_per_user"] = round((spent["tokens_out"] + spent["cached_tokens_out"]) / users, 1)
    return spent


def _chosen_reg(config, baseline: RatingBaseline, split) -> tuple[float, dict[str, float]]:
    """The baseline's reg: given, or the one with the lowest validation RMSE when fitted on train."""
    from recstack.models.rating import BiasedMF

    if not isinstance(baseline.reg, list):
        return float(baseline.reg), {}
    if len(baseline.reg) == 1 or len(split.valid) == 0:
        return float(baseline.reg[0]), {}
    valid = split.valid
    scores = {}
    for reg in baseline.reg:
        model = BiasedMF(factors=baseline.factors, reg=reg, iterations=baseline.iterations,
                         seed=config.seed).fit(split.train)
        error = model.predict(valid.user, valid.item) - valid.value
        scores[str(reg)] = float(np.sqrt(np.mean(error ** 2)))
    best = min(baseline.reg, key=lambda reg: scores[str(reg)])
    return float(best), scores


def _run_rating(config, section: RatingSection, lm, titles, split, history, test, users, say,
                samples) -> dict[str, Any]:
    from recstack.models.llm import LLMRating
    from recstack.models.rating import BiasedMF

    if history.value is None or test.value is None:
        raise RecstackError(f"rating prediction needs ratings: {config.data.label} has no value column")
    rows = np.flatnonzero(np.isin(test.user, users))
    pair_users, pair_items, truth = test.user[rows], test.item[rows], test.value[rows].astype(np.float64)
    say(f"  rating: {len(rows)} held-out ratings of {len(users)} users")
    out: dict[str, Any] = {"n_ratings": int(len(rows)), "n_users": int(len(users)), "rows": {}}
    for baseline in section.baselines:
        clock = time.perf_counter()
        reg, valid_rmse = _chosen_reg(config, baseline, split)
        model = BiasedMF(factors=baseline.factors, reg=reg, iterations=baseline.iterations,
                         seed=config.seed).fit(history)
        fit_seconds = time.perf_counter() - clock
        clock = time.perf_counter()
        predicted = model.predict(pair_users, pair_items)
        row = _rating_row(truth, predicted)
        row.update({"kind": "baseline", "fit_seconds": round(fit_seconds, 3), "reg": reg, "valid_RMSE_by_reg": valid_rmse,
                    "seconds_per_user": round((time.perf_counter() - clock) / len(users), 6)})
        out["rows"][baseline.label] = row
        chosen = ", chosen on validation" if valid_rmse else ""
        say(f"    {baseline.label} (reg {reg:g}{chosen}): RMSE {row['RMSE']:.4f}, MAE {row['MAE']:.4f}, "
            f"fit {fit_seconds:.1f} s")
    for method in section.methods:
        model = LLMRating(lm, titles, shots=method.shots, max_history=section.max_history,
                          answer_tokens=section.answer_tokens, seed=config.seed)
        tuning = None
        if method.lora_examples:
            from recstack.llm.lora import LoRASettings

            model.lm = getattr(lm, "backend", lm)
            model.fit_lora(split.train, method.lora_examples, LoRASettings(epochs=method.lora_epochs, seed=config.seed),
                           store=lora_store(config))
            tuning = model.tuning_
            model.lm = _cached_like(lm, model.lm)
            how = f"loaded (trained before in {tuning.seconds:.0f} s)" if tuning.reused else f"{tuning.seconds:.0f} s"
            say(f"    {method.label}: LoRA on {tuning.n_examples} ratings, {how}, loss "
                + " -> ".join(f"{v:.3f}" for v in tuning.loss_per_epoch))
        before = model.lm.usage.as_dict()
        clock = time.perf_counter()
        predictions = model.predict(pair_users, pair_items, history)
        seconds = time.perf_counter() - clock
        cost = _usage_since(model.lm, before, len(users))
        expected = _rating_row(truth, predictions.expected)
        parsed = _rating_row(truth, predictions.with_fallback())
        for suffix, row in (("expected", expected), ("parsed", parsed)):
            row.update({"kind": "llm", "shots": method.shots, "wall_seconds": round(seconds, 3), **cost})
            if tuning is not None:
                row["lora"] = _tuning_fields(tuning)
            out["rows"][f"{method.label} ({suffix})"] = row
        parsed["n_unparsed"] = predictions.n_unparsed
        say(f"    {method.label}: expected RMSE {expected['RMSE']:.4f}, parsed RMSE {parsed['RMSE']:.4f} "
            f"({predictions.n_unparsed} unparsed, fell back to expected); {seconds:.1f} s")
        for row_index in range(min(N_SAMPLE_USERS, len(pair_users))):
            samples.append({"section": "rating", "method": method.label, "user": int(pair_users[row_index]),
                            "item": int(pair_items[row_index]), "truth": float(truth[row_index]),
                            "prompt": predictions.prompts[row_index], "answer": predictions.answers[row_index],
                            "expected": float(predictions.expected[row_index])})
    dense = [r for r in out["rows"].values() if r["kind"] == "baseline"]
    if dense:
        reference = max(dense[0]["seconds_per_user"], 1e-9)
        for row in out["rows"].values():
            if row["kind"] == "llm":
                row["time_ratio_to_" + section.baselines[0].label] = round(row["seconds_per_user"] / reference, 1)
    return out


def lora_store(config) -> Path | None:
    """Where trained LoRA adapters are kept (`recstack.llm.lora`): beside the answer cache, so a re-run
    loads them instead of training again; None when the cache is off (`llm.cache: false`)."""
    cache = config.llm.cache
    if cache is False:
        return None
    if isinstance(cache, str):
        return Path(cache).expanduser().parent / "lora"
    from recstack.data.datasets import data_home

    return data_home(config.cache_dir) / "llm" / "lora"


def _tuning_fields(tuning) -> dict[str, Any]:
    """A tuning's figures for metrics.json; `reused`: loaded from the store, the seconds are the original's."""
    return {"examples": tuning.n_examples, "epochs": tuning.settings.epochs, "seconds": round(tuning.seconds, 1),
            "loss_per_epoch": tuning.loss_per_epoch, "trainable_parameters": tuning.trainable_parameters,
            "key": tuning.key, "reused": tuning.reused}


def _keep_adapters(metrics: dict[str, Any], store: Path | None, folder: Path) -> None:
    """Copy every LoRA tuning the run used from the store into the run directory (`lora/<key>/`), so the
    run carries its tuned weights (`recstack.llm.lora.finetune_lora(..., store=<run>/lora)` loads them)."""
    if store is None:
        return
    keys = {row["lora"]["key"] for section in ("rating", "tallrec") for row in metrics.get(section, {}).get("rows", {}).values()
            if isinstance(row, dict) and row.get("lora")}
    for key in sorted(keys):
        shutil.copytree(store / key, folder / key)


def _cached_like(lm, tuned):
    """`tuned` behind the same answer cache as `lm` (its own fingerprint keeps its answers apart)."""
    from recstack.llm import CachedLM

    return CachedLM(tuned, lm.path) if isinstance(lm, CachedLM) else tuned


def _run_tallrec(config, section: TALLRecSection, lm, titles, split, history, users, say) -> dict[str, Any]:
    """AUC of P(Yes) on the users' held-out items (label: rating >= 4) for each number of tuning examples."""
    from recstack.models.llm.tallrec import TALLRec

    test = split.test
    rows = np.flatnonzero(np.isin(test.user, users))
    labels = (test.value[rows] >= 4).astype(np.int8)
    out: dict[str, Any] = {"n_pairs": int(len(rows)), "positive_rate": float(labels.mean()), "rows": {}}
    base = getattr(lm, "backend", lm)
    for n in section.examples:
        store = lora_store(config)
        model = TALLRec(base, titles, n_examples=n, epochs=section.epochs, max_history=section.max_history,
                        seed=config.seed, lora_store=None if store is None else str(store)).fit(split.train)
        model.lm_ = _cached_like(lm, model.lm_)
        before = model.lm_.usage.as_dict()
        clock = time.perf_counter()
        p_yes = model.predict_proba(test.user[rows], test.item[rows], history)
        row = {"AUC": _auc(labels, p_yes), "wall_seconds": round(time.perf_counter() - clock, 3),
               **_usage_since(model.lm_, before, len(users))}
        if model.tuning_ is not None:
            row.update({"train_seconds": round(model.tuning_.seconds, 1), "loss_per_epoch": model.tuning_.loss_per_epoch,
                        "trainable_parameters": model.tuning_.trainable_parameters, "lora": _tuning_fields(model.tuning_)})
        out["rows"][str(n)] = row
        auc = "-" if row["AUC"] is None else f"{row['AUC']:.4f}"
        tuned = "" if not n else (f" (LoRA loaded, trained before in {row['train_seconds']} s)"
                                  if model.tuning_.reused else f" (LoRA {row['train_seconds']} s)")
        say(f"    {n} examples: AUC {auc}" + (tuned if n else " (untuned)"))
    return out


def _candidate_protocol(section: LLMRerankSection, retriever, reranker, history, test, users, rng) -> dict[str, Any]:
    """The held-out item among `candidates` - 1 unseen items drawn uniformly: HR@1 and NDCG@5 per scorer."""
    from recstack.models.protocol import history_rows

    seen = history_rows(history, users).tolil().rows
    n_items = history.n_items
    hits = {"retriever": [], "llm": [], "random": []}
    ndcg5 = {"retriever": [], "llm": []}
    for position, user in enumerate(users):
        targets = test.item[test.indptr[user]:test.indptr[user + 1]]
        target = int(targets[0])
        banned = set(seen[position]) | set(int(t) for t in targets)
        pool = np.setdiff1d(np.arange(n_items), np.fromiter(banned, dtype=np.int64, count=len(banned)))
        negatives = rng.choice(pool, size=min(section.candidates - 1, len(pool)), replace=False)
        candidates = np.concatenate([[target], negatives])
        scored = {"retriever": retriever.score(np.array([user]), history, candidates)[0].astype(np.float64),
                  "llm": reranker.candidate_scores(int(user), candidates, history)}
        for name, scores in scored.items():
            # rank of the target with ties counted against it (a constant scorer is not rewarded)
            rank = int((scores[1:] >= scores[0]).sum())
            hits[name].append(float(rank == 0))
            ndcg5[name].append(1.0 / np.log2(rank + 2) if rank < 5 else 0.0)
        hits["random"].append(1.0 / len(candidates))
    out = {f"{name}": {"HR@1": float(np.mean(values))} for name, values in hits.items()}
    for name, values in ndcg5.items():
        out[name]["NDCG@5"] = float(np.mean(values))
    out["n_candidates"] = int(section.candidates)
    return out


def _run_listwise(config, section: LLMRerankSection, retriever, lm, titles, split, history, users, say) -> dict:
    """The retriever alone and with the listwise reranker, on the first `listwise.users` of the users."""
    from recstack.evaluate import evaluate
    from recstack.models.llm import LLMListwiseRerank

    listwise = section.listwise
    # a random subset of the rerank users (seeded): listwise prompts cost bootstraps x a long generation each
    rng = np.random.default_rng(config.seed + 2)
    subset = np.sort(rng.choice(users, size=min(listwise.users, len(users)), replace=False))
    reranker = LLMListwiseRerank(retriever, lm, titles, n=listwise.n, max_history=section.max_history,
                                 bootstraps=listwise.bootstraps, seed=config.seed)
    out: dict[str, Any] = {"n": listwise.n, "bootstraps": listwise.bootstraps, "n_users": int(len(subset)), "rows": {}}
    for name, scorer in ((section.retriever.display, retriever),
                         (f"{section.retriever.display} + llm listwise top {listwise.n}", reranker)):
        before = lm.usage.as_dict()
        clock = time.perf_counter()
        result = evaluate(scorer, history, split.test, metrics=["NDCG", "Recall", "Hit", "MRR"], ks=section.ks,
                          users=subset)
        row = {key: float(value) for key, value in result.metrics.items()}
        row["seconds_per_user"] = round((time.perf_counter() - clock) / len(subset), 5)
        if scorer is reranker:
            row.update(_usage_since(lm, before, len(subset)))
            row["n_answers"], row["n_unparsed"] = reranker.n_answers, reranker.n_unparsed
        out["rows"][name] = row
        say(f"    {name}: NDCG@10 {row.get('NDCG@10', float('nan')):.4f}")
    return out


def _run_rerank(config, section: LLMRerankSection, lm, titles, split, history, users, say, samples) -> dict[str, Any]:
    from recstack.evaluate import evaluate
    from recstack.models import build
    from recstack.models.llm import LLMRerank

    entry = section.retriever
    clock = time.perf_counter()
    retriever = build(entry.name, {"seed": config.seed, **entry.params}).fit(split.train, split.valid)
    fit_seconds = time.perf_counter() - clock
    reranker = LLMRerank(retriever, lm, titles, n=section.n, max_history=section.max_history,
                         length_norm=section.length_norm)
    labels = ["NDCG", "Recall", "Hit", "MRR"]
    out: dict[str, Any] = {"retriever": entry.display, "n": section.n, "n_users": int(len(users)),
                           "retriever_fit_seconds": round(fit_seconds, 3), "rows": {}}
    for name, scorer in ((entry.display, retriever), (f"{entry.display} + llm top {section.n}", reranker)):
        before = lm.usage.as_dict()
        clock = time.perf_counter()
        result = evaluate(scorer, history, split.test, metrics=labels, ks=section.ks, users=users)
        seconds = time.perf_counter() - clock
        row = {key: float(value) for key, value in result.metrics.items()}
        row["seconds_per_user"] = round(seconds / len(users), 5)
        if scorer is reranker:
            row.update(_usage_since(lm, before, len(users)))
        out["rows"][name] = row
        say(f"    {name}: NDCG@10 {row.get('NDCG@10', float('nan')):.4f} ({seconds:.1f} s)")
    dense = out["rows"][entry.display]["seconds_per_user"]
    llm_row = out["rows"][f"{entry.display} + llm top {section.n}"]
    llm_row["time_ratio_to_retriever"] = round(llm_row["seconds_per_user"] / max(dense, 1e-9), 1)
    if section.listwise is not None:
        out["listwise"] = _run_listwise(config, section, retriever, lm, titles, split, history, users, say)
    rng = np.random.default_rng(config.seed + 1)
    out["candidates"] = _candidate_protocol(section, retriever, reranker, history, split.test, users, rng)
    for user in users[:N_SAMPLE_USERS]:
        samples.append({"section": "rerank", "user": int(user), "prompt": reranker.prefix(int(user), history)})
    return out


def _without_items(log, items: np.ndarray):
    return log.take(~np.isin(log.item, items))


def _target_rank(scores: np.ndarray) -> int:
    """The target's (position 0) rank, ties counted against it (a constant scorer is not rewarded)."""
    return int((scores[1:] >= scores[0]).sum())


def allmrec_candidates(model, users: np.ndarray, targets: np.ndarray, history, cold: np.ndarray, n_candidates: int,
                       rng: np.random.Generator, *, generate: bool = False,
                       samples: list | None = None) -> dict[str, dict[str, list[float]]]:
    """Per group ("warm", "cold") and scorer, the per-user HR@1 and NDCG@5 of the held-out item `targets[user]`
    among `n_candidates` - 1 unseen items of the same kind (trained items for a warm target, `cold` for a
    cold one), scored by the frozen SASRec and by A-LLMRec on the same candidates."""
    from recstack.models.protocol import history_rows

    seen = history_rows(history, users).tolil().rows
    trained = np.flatnonzero(history.item_counts() > 0)
    cold_set = set(int(i) for i in cold)
    groups: dict[str, dict[str, list[float]]] = {}
    for position, user in enumerate(users):
        target = int(targets[user])
        kind = "cold" if target in cold_set else "warm"
        pool = np.setdiff1d(np.asarray(cold, dtype=np.int64) if kind == "cold" else trained,
                            np.array(list(seen[position]) + [target], dtype=np.int64))
        negatives = rng.choice(pool, size=min(n_candidates - 1, len(pool)), replace=False)
        candidates = np.concatenate([[target], negatives]).astype(np.int64)
        shown = rng.permutation(len(candidates))  # the order the prompt lists them in
        scored = {"sasrec": model.sasrec_.score(np.array([user]), history, candidates)[0].astype(np.float64)}
        llm = np.empty(len(candidates))
        llm[shown] = model.candidate_scores(int(user), candidates[shown], history)
        scored["a-llmrec"] = llm
        group = groups.setdefault(kind, {})
        for name, scores in scored.items():
            rank = _target_rank(scores)
            group.setdefault(f"{name} HR@1", []).append(float(rank == 0))
            group.setdefault(f"{name} NDCG@5", []).append(1.0 / np.log2(rank + 2) if rank < 5 else 0.0)
        if generate:
            answer, chosen = model.generated_choice(int(user), candidates[shown], history)
            group.setdefault("a-llmrec generated HR@1", []).append(float(chosen == target))
            group.setdefault("answered a candidate", []).append(float(chosen >= 0))
            if samples is not None and position < N_SAMPLE_USERS:
                samples.append({"section": "allmrec", "user": int(user), "target": target, "kind": kind,
                                "answer": answer, "chosen": chosen})
        group.setdefault("random HR@1", []).append(1.0 / len(candidates))
        group.setdefault("candidates", []).append(float(len(candidates)))
    return groups


def _run_allmrec(config, section: ALLMRecSection, lm, dataset, split, drawn, say, samples) -> dict[str, Any]:
    """A-LLMRec and its frozen SASRec on the held-out item among `candidates`, warm and cold.

    The held-out items of the first `cold_users` of `drawn` (the section's users in the shared sample's
    random order) are made cold: their events leave train and valid, so neither SASRec nor the
    alignment ever sees them. A user whose held-out item is warm gets warm negatives (items with
    training events), one whose held-out item is cold gets cold negatives, so neither scorer can tell
    the target by its kind. The prompt lists the candidates in a seeded random order.
    """
    from recstack.models.llm.allmrec import ALLMRec, item_text_vectors

    test = split.test
    # each user's first held-out item (the one of leave-last); read only for users with test events
    first_target = test.item[np.minimum(test.indptr[:-1], max(len(test) - 1, 0))]
    cold = np.unique(first_target[drawn[:section.cold_users]]).astype(np.int64)
    train, valid = _without_items(split.train, cold), _without_items(split.valid, cold)
    history = train.concat(valid)
    clock = time.perf_counter()
    vectors = item_text_vectors(dataset, cache_dir=config.cache_dir)
    model = ALLMRec(lm, dataset.item_titles(), vectors, section.model_params(config.seed))
    model.fit(train, valid)
    fit_seconds = time.perf_counter() - clock
    say(f"  {len(cold)} cold items; SASRec, stage 1 ({section.stage1_epochs} epochs, loss "
        f"{model.stage1_loss_[0]:.3f} -> {model.stage1_loss_[-1]:.3f}) and stage 2 ({section.stage2_steps} steps, "
        f"loss {np.mean(model.stage2_loss_[:5]):.3f} -> {np.mean(model.stage2_loss_[-5:]):.3f}) in {fit_seconds:.0f} s")
    users = np.sort(drawn[history.user_counts()[drawn] > 0])
    before = model.lm.usage.as_dict()  # the local model itself: soft prompts bypass the answer cache
    clock = time.perf_counter()
    groups = allmrec_candidates(model, users, first_target, history, cold, section.candidates,
                                np.random.default_rng(config.seed + 3), generate=section.generate, samples=samples)
    seconds = time.perf_counter() - clock
    out: dict[str, Any] = {"n_users": int(len(users)), "n_cold_items": int(len(cold)),
                           "n_candidates": int(section.candidates), "fit_seconds": round(fit_seconds, 1),
                           "sasrec_best_epoch": getattr(model.sasrec_, "best_epoch_", None),
                           "stage1_loss_per_epoch": [round(v, 5) for v in model.stage1_loss_],
                           "stage1_terms_first_last": {name: [round(v[0], 5), round(v[-1], 5)]
                                                       for name, v in model.stage1_terms_.items()},
                           "stage2_loss_first_last": [round(float(np.mean(model.stage2_loss_[:5])), 4),
                                                      round(float(np.mean(model.stage2_loss_[-5:])), 4)],
                           "groups": {}, **_usage_since(model.lm, before, len(users))}
    for kind in ("warm", "cold"):
        if kind in groups:
            values = groups[kind]
            row = {name: float(np.mean(v)) for name, v in values.items()}
            row["n"] = len(values["candidates"])
            out["groups"][kind] = row
            say(f"    {kind} ({row['n']} users): SASRec HR@1 {row['sasrec HR@1']:.3f}, A-LLMRec HR@1 "
                f"{row['a-llmrec HR@1']:.3f}" + (f", generated {row['a-llmrec generated HR@1']:.3f}"
                                                 if section.generate else ""))
    out["seconds_per_user"] = round(seconds / max(len(users), 1), 3)
    return out


def _ranking_table(rows: dict[str, dict[str, Any]], keys: list[str], extra: dict[str, Any]) -> list[str]:
    """A markdown table of ranking rows: the metrics, seconds per user, then `extra` columns (title -> cell)."""
    header = ["model", *keys, "s / user", *extra]
    lines = ["| " + " | ".join(header) + " |", "|---|" + "---:|" * (len(header) - 1)]
    for label, row in rows.items():
        cells = [label, *(f"{row[k]:.4f}" for k in keys), str(row["seconds_per_user"]),
                 *(cell(row) for cell in extra.values())]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _report(config: LLMExperimentConfig, metrics: dict[str, Any], manifest: dict[str, Any]) -> str:
    lines = [f"# LLM experiment on {manifest['dataset']}", "",
             f"Backend: {manifest['llm']['backend']} `{manifest['llm']['model']}`; split {config.split.method} "
             f"{config.split.params}; seed {config.seed}.", ""]
    if "rating" in metrics:
        rating = metrics["rating"]
        lines += [f"## Rating prediction ({rating['n_ratings']} held-out ratings of {rating['n_users']} users)", "",
                  "| method | RMSE | MAE | AUC (>= 4) | LLM s / user | tokens in / out per user | time / dense | unparsed |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|"]
        for label, row in rating["rows"].items():
            auc = "-" if row["AUC"] is None else f"{row['AUC']:.4f}"
            llm = row["kind"] == "llm"
            ratio = next((f"{v:,.0f}x" for k, v in row.items() if k.startswith("time_ratio_to_")), "-")
            tokens = f"{row['tokens_in_per_user']:.0f} / {row['tokens_out_per_user']:.0f}" if llm else "-"
            lines.append(f"| {label} | {row['RMSE']:.4f} | {row['MAE']:.4f} | {auc} | "
                         f"{row['seconds_per_user'] if llm else '-'} | {tokens} | {ratio} | "
                         f"{row.get('n_unparsed', '-')} |")
        lines.append("")
    if "tallrec" in metrics:
        tallrec = metrics["tallrec"]
        lines += [f"## TALLRec: AUC against the number of tuning examples ({tallrec['n_pairs']} held-out items, "
                  f"{tallrec['positive_rate']:.0%} liked)", "", "| examples | AUC | LoRA s | final train loss |",
                  "|---:|---:|---:|---:|"]
        for n, row in tallrec["rows"].items():
            auc = "-" if row["AUC"] is None else f"{row['AUC']:.4f}"
            loss = f"{row['loss_per_epoch'][-1]:.4f}" if "loss_per_epoch" in row else "-"
            reused = " (loaded; trained in an earlier run)" if row.get("lora", {}).get("reused") else ""
            lines.append(f"| {n} | {auc} | {row.get('train_seconds', '-')}{reused} | {loss} |")
        lines.append("")
    if "rerank" in metrics:
        rerank = metrics["rerank"]
        keys = [k for k in next(iter(rerank["rows"].values())) if "@" in k]
        lines += [f"## Reranking inside full ranking ({rerank['n_users']} test users, top {rerank['n']})", ""]
        lines += _ranking_table(rerank["rows"], keys, {
            "tokens in / user": lambda row: str(row.get("tokens_in_per_user", "-")),
            "time / retriever": lambda row: f"{row['time_ratio_to_retriever']:,.0f}x"
            if "time_ratio_to_retriever" in row else "-"})
        if "listwise" in rerank:
            listwise = rerank["listwise"]
            lines += ["", f"Listwise ({listwise['n_users']} of those users, top {listwise['n']}, "
                          f"{listwise['bootstraps']} candidate orders each):", ""]
            lines += _ranking_table(listwise["rows"], keys, {
                "unparsed answers": lambda row: f"{row['n_unparsed']} of {row['n_answers']}" if "n_answers" in row
                else "-"})
        cand = rerank["candidates"]
        lines += ["", f"Candidate protocol (held-out item among {cand['n_candidates']}):", "",
                  "| scorer | HR@1 | NDCG@5 |", "|---|---:|---:|"]
        for name in ("retriever", "llm", "random"):
            ndcg = cand[name].get("NDCG@5")
            lines.append(f"| {name} | {cand[name]['HR@1']:.4f} | {'-' if ndcg is None else f'{ndcg:.4f}'} |")
        lines.append("")
    if "allmrec" in metrics:
        allm = metrics["allmrec"]
        lines += [f"## A-LLMRec: the held-out item among {allm['n_candidates']} ({allm['n_users']} test users; "
                  f"{allm['n_cold_items']} held-out items made cold)", "",
                  "| held-out item | users | candidates | SASRec HR@1 | A-LLMRec HR@1 | A-LLMRec generated HR@1 | "
                  "SASRec NDCG@5 | A-LLMRec NDCG@5 | random HR@1 |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for kind, row in allm["groups"].items():
            generated = row.get("a-llmrec generated HR@1")
            lines.append(f"| {kind} | {row['n']} | {row['candidates']:.1f} | {row['sasrec HR@1']:.4f} | "
                         f"{row['a-llmrec HR@1']:.4f} | "
                         f"{'-' if generated is None else f'{generated:.4f}'} | {row['sasrec NDCG@5']:.4f} | "
                         f"{row['a-llmrec NDCG@5']:.4f} | {row['random HR@1']:.4f} |")
        lines += ["", f"Fit (SASRec, stage 1, stage 2) {allm['fit_seconds']} s; scoring {allm['seconds_per_user']} s "
                      "per user. A-LLMRec HR@1 scores each candidate title by its log-likelihood after the soft "
                      "prompt; 'generated' is the paper's: the greedy answer contains the held-out title. "
                      "A cold held-out item is among cold candidates only (fewer when fewer items are cold). "
                      f"Soft-prompt calls go to the local model, not through the answer cache (so not in the line "
                      f"below): {allm['calls']} calls, {allm['seconds']:.1f} s, {allm['tokens_in_per_user']:.0f} "
                      "tokens in per user.", ""]
    usage = manifest["llm"]["usage"]
    lines += [f"LLM calls: {usage['calls']} run ({usage['seconds']:.1f} s, {usage['tokens_in']:,} tokens in, "
              f"{usage['tokens_out']:,} out), {usage['cached_calls']} answered by the cache (they cost "
              f"{usage.get('cached_seconds', 0.0):.1f} s and {usage.get('cached_tokens_in', 0):,} tokens in when they ran). "
              "Per-user costs above count both.", ""]
    return "\n".join(lines)


def run_llm_experiment(config: LLMExperimentConfig | dict[str, Any], *, run_dir: str | os.PathLike | None = None,
                       progress: bool = True, console: Any = None) -> LLMRunResult:
    """Load and split the data, run the rating and rerank sections, write the run directory."""
    from recstack.experiment import rundir
    from recstack.experiment.run import _check_destination, _claim_run_dir, _versions, prepare_data, progress_printer

    config = parse_llm_config(config)
    ranking = config.ranking_config()
    _check_destination(ranking, run_dir)
    console, say = progress_printer(progress, console)
    started = datetime.now(timezone.utc)
    clock = time.perf_counter()
    say(f"[bold]recstack[/bold] LLM: loading data ({config.data.label}) ...")
    dataset, split = prepare_data(ranking)
    titles = dataset.item_titles()
    if titles is None:
        raise RecstackError(f"the LLM methods name items by title, and {dataset.name!r} has no title column in its "
                            "item table; give the items a 'title' column")
    history = split.train.concat(split.valid)
    data_seconds = time.perf_counter() - clock
    rng = np.random.default_rng(config.seed)
    eligible = np.flatnonzero((split.test.user_counts() > 0) & (history.user_counts() > 0))
    wanted = max(s.users for s in (config.rating, config.rerank, config.tallrec, config.allmrec) if s is not None)
    # drawn once in random order; each section takes the first `users` of them (a random subset), sorted
    drawn = rng.choice(eligible, size=min(wanted, len(eligible)), replace=False).astype(np.int64)
    users = np.sort(drawn)
    say(f"  {len(dataset.interactions):,} interactions; {len(users)} of {len(eligible)} test users sampled")
    lm = build_language_model(config.llm, config.cache_dir)
    backend = getattr(lm, "backend", lm)  # the weights load at the first call the cache cannot answer
    fingerprint = hashlib.sha1(json.dumps(config.to_dict(), sort_keys=True).encode()).hexdigest()[:8]
    writer = _claim_run_dir(ranking, dataset, started, fingerprint, run_dir)
    samples: list[dict[str, Any]] = []
    metrics: dict[str, Any] = {}
    with writer as tmp:
        if config.rating is not None:
            say("[bold]rating prediction[/bold]")
            metrics["rating"] = _run_rating(config, config.rating, lm, titles, split, history, split.test,
                                            np.sort(drawn[:config.rating.users]), say, samples)
        if config.tallrec is not None:
            say("[bold]TALLRec[/bold]")
            metrics["tallrec"] = _run_tallrec(config, config.tallrec, lm, titles, split, history,
                                              np.sort(drawn[:config.tallrec.users]), say)
        if config.rerank is not None:
            say("[bold]reranking[/bold]")
            metrics["rerank"] = _run_rerank(config, config.rerank, lm, titles, split, history,
                                            np.sort(drawn[:config.rerank.users]), say, samples)
        if config.allmrec is not None:
            say("[bold]A-LLMRec[/bold]")
            metrics["allmrec"] = _run_allmrec(config, config.allmrec, lm, dataset, split,
                                              drawn[:config.allmrec.users], say, samples)
        manifest = {"run_name": writer.path.name, "task": "llm", "started": started.isoformat(),
                    "finished": datetime.now(timezone.utc).isoformat(), "data_seconds": round(data_seconds, 3),
                    "dataset": dataset.name, "split_fingerprint": split.train.fingerprint(),
                    "users": [int(u) for u in users],
                    "llm": {"backend": config.llm.backend, "model": config.llm.model,
                            "fingerprint": backend.fingerprint(), "load_seconds": getattr(backend, "load_seconds", None),
                            "source": getattr(getattr(backend, "source", None), "provenance", None),
                            "usage": lm.usage.as_dict(),
                            "cache": str(getattr(lm, "path", "")) or None},
                    "versions": _versions()}
        _keep_adapters(metrics, lora_store(config), tmp / "lora")
        rundir.write_yaml(tmp / rundir.CONFIG, config.to_dict())
        rundir.write_json(tmp / rundir.MANIFEST, manifest)
        rundir.write_json(tmp / rundir.METRICS, metrics)
        (tmp / SAMPLES).write_text("".join(json.dumps(s, ensure_ascii=False) + "\n" for s in samples))
        (tmp / "report.md").write_text(_report(config, metrics, manifest))
    if hasattr(lm, "close"):
        lm.close()
    say(f"run directory: {writer.path}")
    return LLMRunResult(writer.path, metrics, config)
