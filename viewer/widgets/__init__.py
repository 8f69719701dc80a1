"""Panels around the slide view, each doing one thing: they write the user's edits into the models
(viewer.model) and follow the models' and controllers' notifications."""
