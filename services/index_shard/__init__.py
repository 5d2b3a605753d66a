"""The index shard service: serves the hnswlib indices routing.json assigns to it."""
