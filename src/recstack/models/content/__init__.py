"""Content-aware models: recommenders that read item side information (e.g. item texts)."""
