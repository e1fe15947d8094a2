"""Data for the ML steps: raw sources -> HDF5 shards + manifest (preprocess), the rank-aware
reader over them (dataset), and node-local staging of shards (staging). Importing this package
imports nothing heavy."""
