"""Cohort evaluation: ``evaluate(spec, on_event, cancel)`` runs a trained model on every slide of
a labels CSV and writes ``predictions.csv``, ``metrics.json`` and ``plot.svg``
(:mod:`engine.evaluate.run`); the metrics themselves are in :mod:`engine.evaluate.report`."""
