"""StreamSlide's desktop viewer (PySide6).

Layers, each importing only those below it: ``model`` (plain Python, no Qt), ``workers`` (every
thread but the UI's), ``render`` (painting), ``widgets`` (bound to the models) and
``controllers`` (models in, engine jobs out), composed by ``main_window``. The viewer talks to
the engine only through its public modules (``engine.api``, ``specs``, ``events``, ``errors``,
``geometry``, ``slides``, ``colormaps``), and never runs torch or reads slides on the UI thread.
"""
