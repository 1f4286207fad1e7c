"""A-LLMRec (Kim et al., "Large Language Models meet Collaborative Filtering: An Efficient All-round
LLM-based Recommender System", KDD 2024): a frozen SASRec's knowledge handed to a frozen LLM.

Stage 1 aligns the SASRec item embeddings E_i with text embeddings Q_i of the items (MiniLM in the
SBERT role) through two autoencoders: e_i = enc_I(E_i), q_i = enc_T(Q_i) (Linear -> sigmoid, width
`latent_size`), decoded back by Linear layers. With x_u the SASRec user representation before the
target i (positive) and a sampled j (negative),

    L = L_match + 0.5 L_rec_item + 0.2 L_rec_text + L_rec,
    L_match = MSE(e_i, q_i) + MSE(e_j, q_j),  L_rec_item = MSE(dec_I(e), E),  L_rec_text = MSE(dec_T(q), Q),
    L_rec = BCE(s(x_u, dec_I(e_i)), 1) + BCE(s(x_u, dec_I(e_j)), 0),  s(x, y) = mean_k x_k y_k.

Stage 2 projects x_u (user MLP) and each e_i (item MLP) into the LLM's token-embedding space; the prompt
holds the user vector, the last `max_history` titles each followed by its vector, and `candidates`
titles with theirs; only the two projections learn, by the LM loss on the target's title.

Scoring: the paper generates a title; recstack scores each candidate by the log-probability of its
title after the soft prompt (`generated_choice` gives the paper's figure by matching the greedy answer). Cold items (no training event: SASRec never learnt their row) enter through the text path,
q_i = enc_T(Q_i), the paper's SBERT variant. Deviations: MiniLM stays frozen (the paper fine-tunes
SBERT), a chat-rendered prompt, the learning rates of a CPU-sized run; see docs/models/allmrec.md.
"""

from __future__ import annotations

import re
from typing import Any, Self

import numpy as np
import torch
from pydantic import Field, NonNegativeFloat, PositiveFloat, PositiveInt, field_validator

from recstack.data.interactions import Interactions
from recstack.errors import RecstackError
from recstack.llm.prompts import title_of, titles_array
from recstack.models.protocol import ModelConfig, check_fitted, check_trainable

SLOT = "\x00"  # where a vector goes in the rendered prompt; never in a title, and split off before tokenising
SYSTEM = "You recommend movies. You answer with the title of one movie from the candidates."


class ALLMRecConfig(ModelConfig):
    sasrec: dict[str, Any] = Field(default_factory=dict)  # recstack SASRec's settings (registry name "sasrec")
    latent_size: PositiveInt = 128  # the joint collaborative-text width (the authors' 128)
    stage1_epochs: PositiveInt = 10
    stage1_batch_size: PositiveInt = 32
    stage1_learning_rate: PositiveFloat = 1e-3  # the authors' 1e-4 suits their many more steps per epoch
    matching_weight: NonNegativeFloat = 1.0
    item_reconstruction_weight: NonNegativeFloat = 0.5  # the paper's alpha
    text_reconstruction_weight: NonNegativeFloat = 0.2  # the paper's beta
    recommendation_weight: NonNegativeFloat = 1.0
    stage2_steps: PositiveInt = 50
    stage2_batch_size: PositiveInt = 2  # the authors' batch
    stage2_learning_rate: PositiveFloat = 1e-3
    train_users: PositiveInt = 200  # users whose last history item is a stage-2 training target
    max_history: PositiveInt = 10  # titles in the prompt (the authors' 10)
    candidates: int = 20  # titles in a stage-2 training prompt, the target among them
    # score = summed log-probability of the title, the probability of generating it; the candidates are
    # listed in the prompt, so after a title's first token the rest is copied at almost no cost, and a
    # mean per token would favour long titles
    length_norm: bool = False

    @field_validator("candidates")
    @classmethod
    def _two_or_more(cls, value: int) -> int:
        if value < 2:
            raise ValueError(f"candidates must be at least 2 (the target and one other item), got {value}; "
                             "set candidates: 20 as the paper does")
        return value

    @field_validator("sasrec")
    @classmethod
    def _known_sasrec(cls, value: dict[str, Any]) -> dict[str, Any]:
        from recstack.models import build

        try:
            build("sasrec", value)
        except RecstackError as exc:
            raise ValueError(f"sasrec settings are not SASRec's: {exc}; use SASRec's field names "
                             "(recstack.models.sequential.sasrec.SASRecConfig), e.g. {epochs: 20}") from None
        return value


class _Autoencoder(torch.nn.Module):
    """enc: Linear -> sigmoid into the joint space; dec: Linear back (the authors' two-layer MLP)."""

    def __init__(self, width: int, latent: int) -> None:
        super().__init__()
        self.encoder = torch.nn.Linear(width, latent)
        self.decoder = torch.nn.Linear(latent, width)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        code = torch.sigmoid(self.encoder(x))
        return code, self.decoder(code)


class _Alignment(torch.nn.Module):
    """Stage 1: the item (collaborative) and text autoencoders."""

    def __init__(self, item_width: int, text_width: int, latent: int) -> None:
        super().__init__()
        self.item = _Autoencoder(item_width, latent)
        self.text = _Autoencoder(text_width, latent)


def stage1_losses(alignment: _Alignment, users: torch.Tensor, pos_items: torch.Tensor, neg_items: torch.Tensor,
                  pos_texts: torch.Tensor, neg_texts: torch.Tensor) -> dict[str, torch.Tensor]:
    """The four stage-1 terms on a batch: x_u (B, d), E of the positive and negative items (B, d), their Q (B, t)."""
    pos_code, pos_back = alignment.item(pos_items)
    neg_code, neg_back = alignment.item(neg_items)
    pos_text_code, pos_text_back = alignment.text(pos_texts)
    neg_text_code, neg_text_back = alignment.text(neg_texts)
    mse, bce = torch.nn.functional.mse_loss, torch.nn.functional.binary_cross_entropy_with_logits
    # the authors' code scores with the mean rather than the sum of the products: SASRec's
    # embeddings are large enough for a sum to saturate the sigmoid at the start
    pos_logits, neg_logits = (users * pos_back).mean(1), (users * neg_back).mean(1)
    return {"matching": mse(pos_code, pos_text_code) + mse(neg_code, neg_text_code),
            "item_reconstruction": mse(pos_back, pos_items) + mse(neg_back, neg_items),
            "text_reconstruction": mse(pos_text_back, pos_texts) + mse(neg_text_back, neg_texts),
            "recommendation": bce(pos_logits, torch.ones_like(pos_logits))
            + bce(neg_logits, torch.zeros_like(neg_logits))}


def _projection(inputs: int, hidden: int, activation: torch.nn.Module) -> torch.nn.Sequential:
    """Linear -> LayerNorm -> activation -> Linear into the LLM's token space (the authors' shape)."""
    out = torch.nn.Sequential(torch.nn.Linear(inputs, hidden), torch.nn.LayerNorm(hidden), activation,
                              torch.nn.Linear(hidden, hidden))
    torch.nn.init.xavier_normal_(out[0].weight)
    torch.nn.init.xavier_normal_(out[3].weight)
    return out


class _Projections(torch.nn.Module):
    def __init__(self, user_width: int, latent: int, hidden: int) -> None:
        super().__init__()
        self.user = _projection(user_width, hidden, torch.nn.LeakyReLU())
        self.item = _projection(latent, hidden, torch.nn.GELU())


def _drop_last(history: Interactions) -> Interactions:
    """Every user's events but the last: the input whose next item is the last one."""
    counts = history.user_counts()
    keep = np.ones(len(history), dtype=bool)
    keep[history.indptr[1:][counts > 0] - 1] = False
    return history.take(keep)


def _normalised(text: str) -> str:
    return re.sub(r"\s+", " ", text.lower()).strip(" \"'")


class ALLMRec:
    """A frozen SASRec and a frozen LLM joined by the two alignment stages; `candidate_scores` ranks candidates.

    `lm`: a `recstack.llm.LocalLM` (its weights run here); `titles`: the items' titles (row = item index);
    `text_vectors`: (n_items, t) text embeddings of the items, e.g. `item_text_vectors(dataset)`.
    """

    Config = ALLMRecConfig

    def __init__(self, lm, titles, text_vectors: np.ndarray | None, config: ALLMRecConfig | dict | None = None,
                 **params) -> None:
        from recstack.models.protocol import make_config

        given = config if isinstance(config, ALLMRecConfig) else {**(config or {}), **params}
        self.config = make_config(ALLMRecConfig, given)
        if text_vectors is None:
            raise RecstackError("A-LLMRec needs text embeddings of the items (text_vectors) for its text encoder; "
                                "give item_text_vectors(dataset) for a dataset with an item table (titles)")
        vectors = np.asarray(text_vectors, dtype=np.float32)
        if vectors.ndim != 2 or len(vectors) != len(titles):
            raise RecstackError(f"A-LLMRec's text_vectors must be one row per item ({len(titles)} titles), "
                                f"got shape {vectors.shape}; encode every item's text in item index order")
        self.lm = getattr(lm, "backend", lm)  # the weights are needed: an answer cache cannot serve soft prompts
        if not hasattr(self.lm, "forward_embeds"):
            raise RecstackError(f"A-LLMRec needs a local language model (recstack.llm.LocalLM), got "
                                f"{type(self.lm).__name__}; soft prompts cannot be sent to a server")
        self.titles = titles_array(titles)
        self.text_vectors = vectors

    # ---- fitting ------------------------------------------------------------------------------------
    def fit(self, train: Interactions, valid: Interactions | None = None, *, sasrec=None) -> Self:
        """SASRec (given, or built from `sasrec` settings and fitted on train/valid), then stages 1 and 2 on
        `train`'s last items. Items without a training event are cold: they use the text path."""
        from recstack.models import build

        check_trainable("A-LLMRec", train)
        if train.n_items != len(self.titles):
            raise RecstackError(f"A-LLMRec was given {len(self.titles)} titles for {train.n_items} items; "
                                "give one title and text vector per item of the data's vocabulary")
        c = self.config
        self.sasrec_ = sasrec if sasrec is not None else \
            build("sasrec", {"seed": c.seed, **c.sasrec}).fit(train, valid)
        self.trained_items_ = train.item_counts() > 0
        torch.manual_seed(c.seed)
        rng = np.random.default_rng(c.seed)
        users = np.flatnonzero(train.user_counts() >= 2)
        if not len(users):
            raise RecstackError("A-LLMRec trains on each user's last item after the ones before; no user has two "
                                "training events")
        inputs = _drop_last(train)
        targets = train.item[train.indptr[users + 1] - 1].astype(np.int64)
        self.stage1_loss_ = self._stage1(train, users, inputs, targets, rng)
        self.stage2_loss_ = self._stage2(train, users, inputs, targets, rng)
        return self

    def item_embeddings(self) -> np.ndarray:
        """The frozen SASRec's item table E (n_items, d), row i = item i (SASRec's padding row left out)."""
        return self.sasrec_.weights_["item_embedding"][1:]

    def _negatives(self, train: Interactions, users: np.ndarray, rng: np.random.Generator, count: int,
                   avoid: np.ndarray | None = None) -> np.ndarray:
        """(len(users), count) distinct trained items per user, none in the user's training events (or `avoid`)."""
        seen = train.matrix().tolil().rows
        pool = np.flatnonzero(self.trained_items_)
        out = np.empty((len(users), count), dtype=np.int64)
        for row, user in enumerate(users):
            banned = set(seen[user])
            if avoid is not None:
                banned.add(int(avoid[row]))
            allowed = pool[~np.isin(pool, np.fromiter(banned, dtype=np.int64, count=len(banned)))]
            if len(allowed) < count:
                raise RecstackError(f"A-LLMRec needs {count} unseen items per user as negatives, user {user} has "
                                    f"{len(allowed)}; lower candidates")
            out[row] = rng.choice(allowed, size=count, replace=False)
        return out

    def _stage1(self, train, users, inputs, targets, rng) -> list[float]:
        c = self.config
        items = torch.from_numpy(np.ascontiguousarray(self.item_embeddings(), dtype=np.float32))
        texts = torch.from_numpy(self.text_vectors)
        reps = torch.from_numpy(self.sasrec_.embed(users, inputs).astype(np.float32))
        self.alignment_ = _Alignment(items.shape[1], texts.shape[1], c.latent_size)
        optimiser = torch.optim.Adam(self.alignment_.parameters(), lr=c.stage1_learning_rate, betas=(0.9, 0.98))
        weights = {"matching": c.matching_weight, "item_reconstruction": c.item_reconstruction_weight,
                   "text_reconstruction": c.text_reconstruction_weight, "recommendation": c.recommendation_weight}
        per_epoch = []
        self.stage1_terms_ = {name: [] for name in weights}  # each unweighted term's epoch mean
        for _ in range(c.stage1_epochs):
            negatives = torch.from_numpy(self._negatives(train, users, rng, 1)[:, 0])
            order = rng.permutation(len(users))
            total, sums = 0.0, dict.fromkeys(weights, 0.0)
            for start in range(0, len(order), c.stage1_batch_size):
                rows = torch.from_numpy(order[start:start + c.stage1_batch_size])
                pos, neg = torch.from_numpy(targets)[rows], negatives[rows]
                terms = stage1_losses(self.alignment_, reps[rows], items[pos], items[neg], texts[pos], texts[neg])
                loss = sum(weights[name] * value for name, value in terms.items())
                optimiser.zero_grad()
                loss.backward()
                optimiser.step()
                total += loss.item() * len(rows)
                for name, value in terms.items():
                    sums[name] += value.item() * len(rows)
            per_epoch.append(total / len(order))
            for name, value in sums.items():
                self.stage1_terms_[name].append(value / len(order))
        self.alignment_.requires_grad_(False)
        return per_epoch

    # ---- stage 2: soft prompts ------------------------------------------------------------------------
    def joint_embeddings(self, items: np.ndarray) -> torch.Tensor:
        """e_i = enc_I(E_i) for trained items, enc_T(Q_i) for cold ones (the text path); (len, latent)."""
        items = np.asarray(items, dtype=np.int64)
        table = torch.from_numpy(np.ascontiguousarray(self.item_embeddings()[items], dtype=np.float32))
        with torch.no_grad():
            collaborative = self.alignment_.item(table)[0]
            textual = self.alignment_.text(torch.from_numpy(self.text_vectors[items]))[0]
        warm = torch.from_numpy(self.trained_items_[items])[:, None]
        return torch.where(warm, collaborative, textual)

    def prompt_text(self, history_items: np.ndarray, candidates: np.ndarray) -> str:
        """The rendered prompt with `SLOT` where the vectors go: the user, then each history and candidate title."""
        history = ", ".join(f'"{title_of(self.titles, int(i))}"{SLOT}' for i in history_items)
        listed = ", ".join(f'"{title_of(self.titles, int(i))}"{SLOT}' for i in candidates)
        content = (f"{SLOT} is a user representation. This user has watched {history} in the previous. Recommend "
                   f"one next movie for this user to watch next from the following movie title set, {listed}. "
                   "Answer with the title only.")
        return self.lm.render([{"role": "system", "content": SYSTEM}, {"role": "user", "content": content}])

    def soft_prompt(self, user_rep: np.ndarray, history_items: np.ndarray, candidates: np.ndarray) -> torch.Tensor:
        """(T, hidden) input vectors of one prompt; differentiable in the projections."""
        pieces = self.prompt_text(history_items, candidates).split(SLOT)
        embed = self.lm.input_embeddings()
        slots = torch.cat([self.projections_.user(torch.from_numpy(np.asarray(user_rep, np.float32))[None]),
                           self.projections_.item(self.joint_embeddings(np.concatenate([history_items, candidates])))])
        out = []
        for position, text in enumerate(pieces):
            ids = self.lm.token_ids(text) if text else []
            if ids:
                out.append(embed(torch.tensor(ids, dtype=torch.long, device=embed.weight.device)).to(slots.device))
            if position < len(slots):
                out.append(slots[position:position + 1])
        return torch.cat(out)

    def _example(self, user: int, inputs: Interactions, target: int, negatives: np.ndarray,
                 rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        start, end = inputs.indptr[user], inputs.indptr[user + 1]
        history = inputs.item[max(start, end - self.config.max_history):end].astype(np.int64)
        candidates = rng.permutation(np.concatenate([[target], negatives]))
        return history, candidates

    def _stage2(self, train, users, inputs, targets, rng) -> list[float]:
        c = self.config
        hidden = int(self.lm.input_embeddings().weight.shape[1])
        self.projections_ = _Projections(self.sasrec_.config.embedding_size, c.latent_size, hidden)
        optimiser = torch.optim.Adam(self.projections_.parameters(), lr=c.stage2_learning_rate, betas=(0.9, 0.98))
        chosen = rng.choice(len(users), size=min(c.train_users, len(users)), replace=False)
        users, targets = users[chosen], targets[chosen]
        reps = self.sasrec_.embed(users, inputs)
        negatives = self._negatives(train, users, rng, c.candidates - 1, avoid=targets)
        answers = {int(t): self.lm.token_ids(title_of(self.titles, int(t))) for t in np.unique(targets)}
        losses = []
        order = np.array([], dtype=np.int64)
        for _ in range(c.stage2_steps):
            if len(order) < c.stage2_batch_size:
                order = np.concatenate([order, rng.permutation(len(users))])
            batch, order = order[:c.stage2_batch_size], order[c.stage2_batch_size:]
            loss = self._lm_loss([(reps[r], *self._example(int(users[r]), inputs, int(targets[r]), negatives[r], rng),
                                   answers[int(targets[r])]) for r in batch])
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            losses.append(loss.item())
        self.projections_.requires_grad_(False)
        return losses

    def _lm_loss(self, examples) -> torch.Tensor:
        """Mean cross-entropy of the answer tokens after each soft prompt, the batch right-padded."""
        embed = self.lm.input_embeddings()
        rows, labels = [], []
        for rep, history, candidates, answer in examples:
            prompt = self.soft_prompt(rep, history, candidates)
            answer_ids = torch.tensor(answer, dtype=torch.long)
            rows.append(torch.cat([prompt, embed(answer_ids.to(embed.weight.device)).to(prompt.device)]))
            labels.append(torch.cat([torch.full((len(prompt),), -100), answer_ids]))
        width = max(len(r) for r in rows)
        inputs = torch.stack([torch.cat([r, r.new_zeros(width - len(r), r.shape[1])]) for r in rows])
        mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows])
        targets = torch.stack([torch.cat([t, torch.full((width - len(t),), -100)]) for t in labels])
        logits = self.lm.forward_embeds(inputs, mask).float()
        # position p predicts token p + 1
        return torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]),
                                                 targets[:, 1:].reshape(-1).to(logits.device), ignore_index=-100)

    # ---- scoring ------------------------------------------------------------------------------------
    def _prefix(self, user: int, history: Interactions, candidates: np.ndarray) -> torch.Tensor:
        check_fitted(self, "projections_")
        start, end = history.indptr[user], history.indptr[user + 1]
        items = history.item[max(start, end - self.config.max_history):end].astype(np.int64)
        rep = self.sasrec_.embed(np.array([user]), history)[0]
        with torch.no_grad():
            return self.soft_prompt(rep, items, np.asarray(candidates, dtype=np.int64))

    def candidate_scores(self, user: int, candidates: np.ndarray, history: Interactions) -> np.ndarray:
        """The LLM's score of each candidate for one user: its title's log-likelihood (summed; the mean per
        token with `length_norm`) after the soft prompt listing the candidates in the given order."""
        titles = [title_of(self.titles, int(i)) for i in candidates]
        scores = np.asarray(self.lm.continuation_logprobs_embeds(self._prefix(user, history, candidates), titles),
                            dtype=np.float64)
        if self.config.length_norm:
            scores = scores / np.array([max(len(self.lm.token_ids(t)), 1) for t in titles], dtype=np.float64)
        return scores

    def generated_choice(self, user: int, candidates: np.ndarray, history: Interactions,
                         max_new_tokens: int = 24) -> tuple[str, int]:
        """The paper's inference: the greedy answer, and the candidate whose title it contains (-1: none;
        the longest title wins when several match)."""
        answer = self.lm.generate_embeds(self._prefix(user, history, candidates), max_new_tokens).text
        said = _normalised(answer)
        matched = [(len(_normalised(title_of(self.titles, int(i)))), int(i)) for i in candidates
                   if _normalised(title_of(self.titles, int(i))) in said]
        return answer, (max(matched)[1] if matched else -1)


def item_text_vectors(dataset, *, cache_dir=None, progress: bool = False) -> np.ndarray:
    """MiniLM embeddings of the items' texts ("Title (year). Genres: ..."), row = item index (cached on disk)."""
    from recstack.data.features import SentenceEncoder, encode_texts, item_texts

    if not dataset.item_table:
        raise RecstackError(f"A-LLMRec needs item texts, and dataset {dataset.name!r} has no item side table; "
                            "load data with item metadata (titles), e.g. ml-100k")
    return encode_texts(item_texts(dataset), SentenceEncoder(), cache_dir=cache_dir, progress=progress)
