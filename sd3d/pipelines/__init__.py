"""Generation pipelines: load a model, sample views, write them. One module per model family."""
