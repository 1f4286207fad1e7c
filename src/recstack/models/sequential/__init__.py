"""Sequential (next-item) recommenders: the input is the user's time-ordered history."""
