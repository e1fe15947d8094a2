"""The local backend: run a rendered run's scripts on this machine, without SLURM, through a
detached runner.
"""
