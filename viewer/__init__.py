"""StreamSlide's desktop viewer (PySide6). Talks to the engine only through engine.api,
engine.slides and engine.geometry; never runs torch or reads slides on the UI thread."""
