"""Every file format the engine reads or writes, each owned by one module."""
