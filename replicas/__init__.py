"""Worker side of downpour: the model replica actor, the evaluator, models, datasets and partitions."""
