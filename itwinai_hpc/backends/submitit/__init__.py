"""The submitit backend: each step's rendered script runs as a submitit job, on SLURM or locally."""
