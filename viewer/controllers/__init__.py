"""Controllers: turn the models into engine jobs and job events into model changes. They take
models and workers, never read a widget, and are tested without one."""
