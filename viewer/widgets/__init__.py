"""Small panels around the slide view; each does one thing and talks through signals."""
