"""The LLM backends on the real SmolLM2-135M-Instruct (fetched from the package index, never the web):
scoring with a shared prefix equals scoring whole prompts, the cache answers identically, and the
OpenAI-compatible backend against a real `recstack llm-serve` process on loopback gives the local
backend's answers."""

from __future__ import annotations

import http.server
import os
import socket
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from recstack.data.interactions import Interactions, Vocab
from recstack.llm import CachedLM, LLMError, OpenAICompatibleLM
from recstack.llm.prompts import RATING_OPTIONS
from recstack.models.llm import LLMRating, LLMRerank

pytestmark = pytest.mark.slow

PREFIX_MESSAGES = [{"role": "system", "content": "You recommend movies."},
                   {"role": "user", "content": "I liked Toy Story (1995) and Babe (1995). Name one movie I will like."}]
TITLES = ["Aladdin (1992)", "Heat (1995)", "The Lion King (1994)", "Casino (1995)", "Fargo (1996)"]


@pytest.fixture(scope="module")
def lm(smollm2):
    return smollm2  # tests/conftest.py: loaded once per session, max_batch 2


def test_shared_prefix_scores_equal_whole_prompt_scores(lm):
    prefix = lm.render(PREFIX_MESSAGES)
    shared = lm.continuation_logprobs(prefix, TITLES)
    whole = lm.continuation_logprobs(prefix, TITLES, share_prefix=False)
    assert shared.shape == (5,) and np.all(np.isfinite(shared)) and np.all(shared < 0)
    np.testing.assert_allclose(shared, whole, rtol=1e-4, atol=1e-3)
    # the scores say something: a title's log-likelihood is not its length alone
    assert len(set(np.round(shared, 3))) == 5


def test_a_gguf_model_is_converted_once_and_then_loads_the_same_without_parsing_it(lm, tmp_path, monkeypatch):
    import torch
    import transformers.modeling_gguf_pytorch_utils as gguf_utils

    from recstack.llm import LocalLM

    gguf = lm.source.folder / lm.source.gguf_file  # by path: a fresh converted cache in tmp_path
    first = LocalLM(gguf, cache_dir=tmp_path)
    prompt = first.render(PREFIX_MESSAGES)
    expected = first.option_logprobs(prompt, RATING_OPTIONS)
    converted = sorted(p.name for p in (tmp_path / "llm" / "converted").glob("*/*"))
    assert converted == ["model-float32", "tokenizer"], converted

    def parse(*args, **kwargs):
        raise AssertionError("the GGUF file was parsed again")

    monkeypatch.setattr(gguf_utils, "load_gguf_checkpoint", parse)
    again = LocalLM(gguf, cache_dir=tmp_path)
    assert again.render(PREFIX_MESSAGES) == prompt and again.count_tokens(prompt) == first.count_tokens(prompt)
    # the weights come back bit for bit (a file round trip, no arithmetic); the scores computed from
    # them are compared with a tolerance, as floats from kernels are everywhere in the suite
    ours, theirs = first._load()[0].state_dict(), again._load()[0].state_dict()
    assert ours.keys() == theirs.keys()
    for name, tensor in ours.items():
        assert torch.equal(tensor, theirs[name]), name
    np.testing.assert_allclose(again.option_logprobs(prompt, RATING_OPTIONS), expected, rtol=1e-6, atol=1e-6)
    assert again.generate([prompt], 6)[0].text == first.generate([prompt], 6)[0].text
    assert again.fingerprint() == first.fingerprint()  # the answer cache keys on the source, not on its form
    # the session's model (named, from the shared cache) is the same network
    np.testing.assert_allclose(lm.option_logprobs(lm.render(PREFIX_MESSAGES), RATING_OPTIONS), expected,
                               rtol=1e-5, atol=1e-5)


def test_prompt_token_logprobs_agree_with_continuation_scores(lm):
    prefix = lm.render(PREFIX_MESSAGES)
    answer = lm.token_logprobs(prefix + TITLES[0], top=3)
    kept = [v for o, v in zip(answer["text_offset"], answer["token_logprobs"]) if o >= len(prefix)]
    assert answer["token_logprobs"][0] is None and len(answer["top_logprobs"]) == len(answer["tokens"])
    np.testing.assert_allclose(sum(kept), lm.continuation_logprobs(prefix, TITLES[:1])[0], rtol=1e-4, atol=1e-3)


def test_generation_is_greedy_and_counted(lm):
    prompt = lm.render([{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": "Say hello."}])
    before = lm.usage.tokens_out
    first, second = lm.generate([prompt, prompt], max_new_tokens=5)
    assert first.text == second.text and first.tokens_out <= 5 and first.tokens_in == lm.count_tokens(prompt)
    assert lm.usage.tokens_out - before == first.tokens_out + second.tokens_out


def test_a_prompt_longer_than_the_context_is_one_clear_error(lm):
    with pytest.raises(LLMError, match="longer than the model's context of 8192.*max_history"):
        lm.continuation_logprobs("movie " * 9000, ["Heat (1995)"])


def test_the_cache_answers_identically_and_resumes_after_reopening(lm, tmp_path):
    prefix = lm.render(PREFIX_MESSAGES)
    cached = CachedLM(lm, tmp_path / "llm.sqlite")
    first = cached.continuation_logprobs(prefix, TITLES)
    assert cached.usage.calls == 1 and cached.usage.cached_calls == 0
    again = cached.continuation_logprobs(prefix, TITLES)
    assert cached.usage.calls == 1 and cached.usage.cached_calls == 1
    # the served answer carries what it cost when it ran
    assert cached.usage.cached_tokens_in == cached.usage.tokens_in > 0
    assert cached.usage.cached_seconds == pytest.approx(cached.usage.seconds)
    np.testing.assert_array_equal(first, again)
    cached.close()
    reopened = CachedLM(lm, tmp_path / "llm.sqlite")
    calls = lm.usage.calls
    # exact on purpose: the cache returns the stored float64 answer (JSON round-trips it), not a recomputation
    np.testing.assert_array_equal(reopened.continuation_logprobs(prefix, TITLES), first)
    assert lm.usage.calls == calls  # the model was not asked again
    # a different question is not answered from the cache
    reopened.continuation_logprobs(prefix, TITLES[:2])
    assert lm.usage.calls == calls + 1


def _ratings_log():
    users, items = Vocab(["u0", "u1"]), Vocab([f"i{j}" for j in range(len(TITLES))])
    return Interactions(np.array([0, 0, 0, 1, 1]), np.array([0, 1, 2, 3, 4]), users, items,
                        value=np.array([5, 1, 4, 2, 3], dtype=np.float32), timestamp=np.array([1, 2, 3, 4, 5]))


def test_rating_prediction_gives_an_expected_rating_and_counts_unparsed_answers(lm):
    history = _ratings_log()
    model = LLMRating(lm, np.array(TITLES, dtype=object), shots=1)
    predictions = model.predict(np.array([0, 1]), np.array([3, 0]), history)
    assert np.all((predictions.expected >= 1) & (predictions.expected <= 5))
    parsed_ok = ~np.isnan(predictions.parsed)
    assert predictions.n_unparsed == int((~parsed_ok).sum())
    assert np.all(np.isin(predictions.parsed[parsed_ok], [1, 2, 3, 4, 5]))
    np.testing.assert_array_equal(predictions.with_fallback()[~parsed_ok], predictions.expected[~parsed_ok])
    # the expected rating is the digits' probabilities' mean, read from the same prompt
    logprobs = lm.option_logprobs(predictions.prompts[0], RATING_OPTIONS)
    weights = np.exp(logprobs - logprobs.max())
    assert predictions.expected[0] == pytest.approx(float(np.arange(1, 6) @ weights / weights.sum()))


class _Fixed:
    """A retriever that scores item j as -j for every user (its order is 0, 1, 2, ...)."""

    def score(self, users, history, items=None):
        return np.tile(-np.arange(len(TITLES), dtype=np.float32), (len(users), 1))


def test_llm_rerank_reorders_the_top_n_by_likelihood_and_keeps_the_rest(lm):
    history = _ratings_log()
    model = LLMRerank(_Fixed(), lm, np.array(TITLES, dtype=object), n=3, mask_history=False)
    scores = model.score(np.array([1]), history)[0]
    top = np.argsort(-scores, kind="stable")
    expected_top = np.array([0, 1, 2])[np.argsort(-model.candidate_scores(1, np.array([0, 1, 2]), history),
                                                  kind="stable")]
    np.testing.assert_array_equal(top[:3], expected_top)
    np.testing.assert_array_equal(top[3:], [3, 4])  # below N: the retriever's order


# ---- the OpenAI-compatible backend against a real server on loopback ------------------------------------

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server():
    port = _free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen([sys.executable, "-m", "recstack.cli", "llm-serve", "--model", "smollm2",
                                "--port", str(port), "--threads", "1"], env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    import httpx

    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"llm-serve exited: {process.stdout.read()}")
        try:
            if httpx.get(url + "/health", timeout=1).status_code == 200:
                break
        except httpx.TransportError:
            time.sleep(0.5)
    else:
        process.kill()
        pytest.fail("llm-serve did not start within 240 s")
    yield url
    process.terminate()
    process.wait(timeout=30)


def test_http_backend_gives_the_local_answers(lm, server):
    remote = OpenAICompatibleLM(server, "smollm2")
    prefix = remote.render(PREFIX_MESSAGES)
    assert prefix == lm.render(PREFIX_MESSAGES)  # ChatML, as SmolLM2's own template renders it
    np.testing.assert_allclose(remote.continuation_logprobs(prefix, TITLES),
                               lm.continuation_logprobs(prefix, TITLES), rtol=1e-4, atol=1e-3)
    assert remote.generate([prefix], 6)[0].text == lm.generate([prefix], 6)[0].text
    assert remote.count_tokens(prefix) == lm.count_tokens(prefix)
    assert remote.usage.calls == 2


def test_http_backend_names_the_server_fault(server):
    with pytest.raises(LLMError, match="refused the request.*not served here"):
        OpenAICompatibleLM(server, "gpt-none").generate(["hi"], 2)
    down = OpenAICompatibleLM(f"http://127.0.0.1:{_free_port()}", "smollm2", retries=2)
    with pytest.raises(LLMError, match="did not answer after 2 tries.*server is up"):
        down.generate(["hi"], 2)


def test_http_backend_refuses_malformed_json():
    class Garbage(http.server.BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802 - the http.server API
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(b"{not json")

        def log_message(self, *args):
            pass

    httpd = http.server.HTTPServer(("127.0.0.1", 0), Garbage)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        remote = OpenAICompatibleLM(f"http://127.0.0.1:{httpd.server_port}", "smollm2")
        with pytest.raises(LLMError, match="malformed JSON"):
            remote.continuation_logprobs("a", ["b"])
    finally:
        httpd.shutdown()


def test_lora_tunes_a_copy_whose_answers_are_cached_apart(lm):
    from recstack.llm.lora import LoRASettings, finetune_lora

    prompt = lm.render([{"role": "system", "content": "Answer Yes. or No."},
                        {"role": "user", "content": "Is Fargo (1996) a movie?"}])
    before = lm.option_logprobs(prompt, ["Yes", "No"])
    tuned, record = finetune_lora(lm, [prompt] * 4, ["No."] * 4,
                                  LoRASettings(epochs=3, batch_size=2, learning_rate=5e-3, seed=0))
    assert record.loss_per_epoch[-1] < record.loss_per_epoch[0]
    assert 0 < record.trainable_parameters < 1_000_000  # adapters only: rank 8 on q and v of 30 layers
    after = tuned.option_logprobs(prompt, ["Yes", "No"])
    assert after[1] - after[0] > before[1] - before[0]  # it learnt to prefer "No"
    np.testing.assert_allclose(lm.option_logprobs(prompt, ["Yes", "No"]), before, rtol=1e-6)  # base untouched
    assert tuned.fingerprint() != lm.fingerprint() and tuned.tuning.startswith("lora:")


def test_stored_adapters_are_loaded_instead_of_retrained_and_give_the_same_model(lm, tmp_path, monkeypatch):
    from recstack.llm import lora

    prompt = lm.render([{"role": "user", "content": "Is Fargo (1996) a movie?"}])
    settings = lora.LoRASettings(epochs=2, batch_size=2, learning_rate=5e-3, seed=0)
    first, record = lora.finetune_lora(lm, [prompt] * 2, ["No."] * 2, settings, store=tmp_path)
    assert not record.reused and (tmp_path / record.key / lora.ADAPTERS).exists()
    monkeypatch.setattr(lora, "_train", lambda *a, **k: pytest.fail("stored adapters were trained again"))
    second, again = lora.finetune_lora(lm, [prompt] * 2, ["No."] * 2, settings, store=tmp_path)
    assert again.reused and again.key == record.key and again.loss_per_epoch == record.loss_per_epoch
    # the same merged weights, bit for bit: the same fingerprint, so the answer cache serves the re-run
    assert second.fingerprint() == first.fingerprint()
    assert np.array_equal(second.option_logprobs(prompt, ["Yes", "No"]), first.option_logprobs(prompt, ["Yes", "No"]))
    # other examples or settings are another key
    assert lora.tuning_key(lm, [prompt], ["Yes."], settings) != record.key
    (tmp_path / record.key / lora.ADAPTERS).write_bytes(b"")  # a broken store entry is one clear error
    with pytest.raises(LLMError, match="cannot be read .*delete that folder"):
        lora.finetune_lora(lm, [prompt] * 2, ["No."] * 2, settings, store=tmp_path)


def test_tallrec_tunes_on_the_training_ratings_and_predicts_a_probability(lm):
    from recstack.models.llm.tallrec import TALLRec

    history = _ratings_log()
    model = TALLRec(lm, np.array(TITLES, dtype=object), n_examples=3, epochs=1, batch_size=3).fit(history)
    assert model.tuning_.n_examples == 3 and model.lm_ is not lm
    p = model.predict_proba(np.array([0, 1]), np.array([4, 0]), history)
    assert p.shape == (2,) and np.all((p > 0) & (p < 1))
    untuned = TALLRec(lm, np.array(TITLES, dtype=object), n_examples=0).fit(history)
    assert untuned.lm_ is lm and untuned.tuning_ is None
    assert "User Preference: \"Aladdin (1992)\", \"The Lion King (1994)\"" in \
        untuned.messages_from(history.item[:3], history.value[:3], 4)[1]["content"]
