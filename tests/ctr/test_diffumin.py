"""DiffuMIN: its pieces by hand (orthonormal channels, routed interests, InfoNCE, the DDPM closed forms,
the total loss), bad settings, a CTR run, and a pinned AUC on the planted data with a behaviour sequence.
What every CTR model passes (score = logit of predict, save/load, seeds, refits) is in test_ctr_contract.py."""

import json
import math

import numpy as np
import pytest
import torch
import yaml

from recstack.evaluate.ctr import auc
from recstack.experiment.run import run_experiment
from recstack.models.ctr import build_ctr
from recstack.models.ctr.diffumin import DiffuMIN, Schedule, extract_interests, info_nce, orthogonal_channels
from recstack.models.protocol import ConfigError

# small and fast: 2 reverse steps instead of 10 (the rest are the defaults)
FAST = {"epochs": 5, "learning_rate": 2e-2, "batch_size": 512, "verbose": False, "embedding_size": 8,
        "hidden_units": [32, 16], "infer_steps": 2}
# test AUC on the planted split (seed 0) with FAST, measured 0.928 (the planted pair caps it near 0.92-0.93;
# FM, DeepFM and AutoInt reach 0.91-0.92 there, tests/ctr/test_ctr_models.py)
PINNED = 0.928


@pytest.fixture(scope="module")
def split(planted_sequence_split):
    return planted_sequence_split  # the planted fields and `history`, the latest 20 training items


@pytest.fixture(scope="module")
def fitted(split):
    return build_ctr("diffumin", FAST).fit(split.train, split.valid)


# ---- the pieces, by hand ----------------------------------------------------------------------------

def test_channels_are_orthonormal(fitted, split):
    torch.manual_seed(0)
    channels = orthogonal_channels(torch.randn(5, 4 * 8), 4)
    assert channels.shape == (5, 4, 8)
    torch.testing.assert_close(channels @ channels.transpose(1, 2), torch.eye(4).expand(5, 4, 4), atol=1e-5, rtol=0)
    net = fitted._net()  # the fitted projection of real target items
    targets = net.fields.embedding(torch.arange(1, 40))
    o = net.channels(targets)
    torch.testing.assert_close(o @ o.transpose(1, 2), torch.eye(4).expand(39, 4, 4), atol=1e-5, rtol=0)


def test_interests_route_each_behaviour_to_one_channel_and_keep_the_top_share():
    behaviours = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [2.0, 0.0], [5.0, 5.0]]])  # the last is padding
    mask = torch.tensor([[True, True, True, False]])
    channels = torch.eye(2).unsqueeze(0)  # A = E
    interests, relevance = extract_interests(behaviours, mask, channels, top_p=0.5)
    torch.testing.assert_close(relevance, behaviours)
    # channel 0 gets e1 and e3 (both routed to it, both in its top ceil(0.5 * 3) = 2): (1 e1 + 2 e3) / 3
    # channel 1 gets e2 only (its top 2 are e2 and a behaviour routed to channel 0): 1 e2 / 3
    torch.testing.assert_close(interests, torch.tensor([[[5 / 3, 0.0], [0.0, 1 / 3]]]))
    narrow, _ = extract_interests(behaviours, mask, channels, top_p=0.3)  # top 1 per channel: e3, e2
    torch.testing.assert_close(narrow, torch.tensor([[[4 / 3, 0.0], [0.0, 1 / 3]]]))
    empty, _ = extract_interests(behaviours, torch.zeros(1, 4, dtype=torch.bool), channels, top_p=0.5)
    assert (empty == 0).all()


def test_info_nce_by_hand():
    anchor = torch.tensor([[[1.0, 0.0], [0.0, 2.0]]])  # one channel, a batch of two
    # cosine similarities: identity; loss per row log(e^(1/tau) + e^0) - 1/tau = log(1 + e^(-1/tau))
    for tau in (1.0, 0.5):
        assert info_nce(anchor, anchor, tau).item() == pytest.approx(math.log(1 + math.exp(-1 / tau)), rel=1e-6)
    swapped = anchor.flip(1)  # every positive orthogonal, every negative aligned
    assert info_nce(anchor, swapped, 1.0).item() == pytest.approx(math.log(1 + math.e), rel=1e-6)


def test_the_diffusion_closed_forms():
    schedule = Schedule(1000, 1e-4, 0.02)
    betas = np.linspace(1e-4, 0.02, 1000)
    alpha_bar = np.cumprod(1 - betas)
    x0, noise = torch.ones(2, 3), torch.full((2, 3), 2.0)
    t = torch.tensor([0, 500])
    want = np.sqrt(alpha_bar[[0, 500]])[:, None] * 1.0 + np.sqrt(1 - alpha_bar[[0, 500]])[:, None] * 2.0
    np.testing.assert_allclose(schedule.q_sample(x0, t, noise).numpy(), np.broadcast_to(want, (2, 3)), rtol=1e-5)
    np.testing.assert_allclose(schedule.q_sample(x0, t, None).numpy()[:, 0], np.sqrt(alpha_bar[[0, 500]]), rtol=1e-6)
    # at t = 0 the posterior mean is x0 itself and no noise is added
    xt = torch.full((2, 3), 7.0)
    zero = torch.zeros(2, dtype=torch.long)
    torch.testing.assert_close(schedule.posterior(x0, xt, zero, torch.randn(2, 3)), x0)
    t = torch.tensor([10, 10])
    c0 = betas[10] * np.sqrt(alpha_bar[9]) / (1 - alpha_bar[10])
    ct = (1 - alpha_bar[9]) * np.sqrt(1 - betas[10]) / (1 - alpha_bar[10])
    np.testing.assert_allclose(schedule.posterior(x0, xt, t, None).numpy(), np.full((2, 3), c0 + 7 * ct), rtol=1e-5)


def test_the_total_loss_is_bce_plus_the_weighted_diffusion_and_contrastive_terms():
    class Stub(torch.nn.Module):
        def forward(self, index, weight, sequence):
            self.losses = {"diffusion": torch.tensor(2.0), "contrastive": torch.tensor(3.0)}
            return torch.tensor([0.0, 2.0])

    model = DiffuMIN(DiffuMIN.Config(diffusion_weight=0.5, contrastive_weight=0.25))
    label = torch.tensor([1.0, 0.0])
    bce = (math.log(2) + math.log(1 + math.exp(2))) / 2
    loss = model.batch_loss(Stub(), (None, None, None, label))
    assert loss.item() == pytest.approx(bce + 0.5 * 2 + 0.25 * 3, rel=1e-6)


def test_a_training_forward_records_both_losses(fitted, split):
    net = fitted._net()
    index, weight = split.train.encode(np.arange(64))
    (sequence,) = split.train.sequences(np.arange(64))
    net.train()
    try:
        torch.manual_seed(0)
        logits = net(torch.from_numpy(index), torch.from_numpy(weight), torch.from_numpy(sequence))
    finally:
        net.eval()
    assert logits.shape == (64,)
    diffusion, contrastive = net.losses["diffusion"].item(), net.losses["contrastive"].item()
    net.losses = {}
    # normalised interests: the x0 error is at most 4 per coordinate pair; InfoNCE at least 0, about log 64 at chance
    assert 0 <= diffusion < 4 and 0 < contrastive < 2 * math.log(64) / 0.05


# ---- the pinned AUC, bad settings, a run ----------------------------------------------------------

def test_learns_the_planted_interaction_with_a_sequence(fitted, split):
    p = fitted.predict(split.test)
    assert p.shape == (len(split.test),) and p.dtype == np.float32 and ((p > 0) & (p < 1)).all()
    value = auc(split.test.label, p)
    assert value == pytest.approx(PINNED, abs=0.03) and value > 0.88
    assert fitted.best_epoch_ >= 1 and "AUC" in fitted.history_[0]
    np.testing.assert_array_equal(fitted.predict(split.test), p)  # evaluation is deterministic


@pytest.mark.parametrize("params, message", [
    ({"n_channels": 9, "embedding_size": 8}, "n_channels 9 > embedding_size 8"),
    ({"embedding_size": 9, "n_heads": 2, "n_channels": 2}, "not a multiple of n_heads"),
    ({"infer_steps": 20, "timesteps": 10}, "infer_steps <= timesteps"),
    ({"top_p": 0.0}, "top_p"),
])
def test_bad_settings_are_named(params, message):
    with pytest.raises(ConfigError, match=message):
        build_ctr("diffumin", params)


def test_a_ctr_run_gives_the_sequence_to_diffumin_and_not_to_deepfm(planted_atomic, planted_features, tmp_path):
    fields = [{"name": "user_id"}, {"name": "item_id"}, *planted_features]
    quick = {"epochs": 1, "batch_size": 1024, "embedding_size": 8}
    raw = {"task": "ctr", "data": {"path": str(planted_atomic), "format": "atomic"},
           "output_dir": str(tmp_path / "runs"),
           "ctr": {"features": [*fields, {"name": "history", "kind": "sequence", "max_len": 10}]},
           "models": [{"name": "deepfm", "features": [f["name"] for f in fields],
                       "params": {**quick, "hidden_units": [16]}},
                      {"name": "diffumin", "params": {**quick, "infer_steps": 1, "hidden_units": [16]}}]}
    (tmp_path / "ctr.yaml").write_text(yaml.safe_dump(raw))
    result = run_experiment(tmp_path / "ctr.yaml", progress=False)
    metrics = json.loads((result.run_dir / "metrics.json").read_text())
    assert set(metrics) == {"deepfm", "diffumin"}
    assert 0 < metrics["diffumin"]["test"]["AUC"] < 1 and metrics["diffumin"]["test"]["LogLoss"] > 0
    manifest = json.loads((result.run_dir / "manifest.json").read_text())
    assert manifest["features"]["info"]["history"]["kind"] == "sequence"
    assert "history" not in manifest["model_features"]["deepfm"]["fields"]
