"""Input pipeline: upstream's dataset pickles (read safely: `index`), validation (`validate`), upstream's
collate (`collate`), length buckets (`buckets`), the grain loader (`pipeline`), per-file and packed splits
(`source`, `pack`, `fingerprint`) and the embedded synthetic dataset (`synthetic`). Import each name from the
module that defines it."""
