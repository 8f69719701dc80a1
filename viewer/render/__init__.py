"""Painting on the UI thread: the slide view, its frame buffer and tile cache, the overlay
painter, the legend and the scale bar. Only ready-made images are drawn here."""
