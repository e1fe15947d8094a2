"""Data for the ML steps: raw sources -> HDF5 shards + manifest (preprocess), and the rank-aware
reader over them (dataset). Importing this package imports nothing heavy."""
