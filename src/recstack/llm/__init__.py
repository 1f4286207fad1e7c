"""Language-model plumbing shared by the LLM recommenders: weights, backends, the answer cache, prompts,
and an OpenAI-compatible server. No recommender code here (that is `recstack.models.llm`).
"""

from recstack.llm.backends import Generation, LanguageModel, LocalLM, OpenAICompatibleLM, Usage
from recstack.llm.cache import CachedLM
from recstack.llm.weights import NAMED_MODELS, LLMError, resolve_model

__all__ = ["CachedLM", "Generation", "LLMError", "LanguageModel", "LocalLM", "NAMED_MODELS", "OpenAICompatibleLM",
           "Usage", "resolve_model"]
