"""Plain-Python models of what the viewer shows and what its next job asks for.

Nothing here imports Qt (not even QtCore) or reads a slide, so every model is tested without a
QApplication. Widgets bind to them (they write the user's edits in and follow the models'
change notifications); controllers read them to build engine specs.
"""
