"""Training on whole slides: the loop (loop.py) and its parts, each one job.

feed (which slides each step trains on), data (a slide as an input; prefetching), classifier
(the network, its streamed trunk, BatchNorm calibration), step (one optimiser step), validator
(the validation pass and the monitor), checkpointer (saving and resuming, through engine.io.training_state), metrics_log
(metrics.jsonl), optim (optimiser, schedule, loss weights), precision (dtypes, autocast) and
distributed (DDP under torchrun).
"""
