"""Training on whole slides: the loop, its state, data, distributed setup."""
