"""Data pipeline: raw formats, k-core filtering, leave-one-out splits, processed-data loading."""
