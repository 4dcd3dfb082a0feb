"""Server side of downpour: shards, server optimizers, staleness rules, the job, config and CLI."""
