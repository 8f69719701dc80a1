"""Everything that runs off the UI thread: engine jobs, tile reads, one-off background jobs, and
the relays that hand their results back to the UI thread."""
