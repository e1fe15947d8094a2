"""The run folder as data: its layout (every file name), step states, planned steps, the manifest
(run.json), the folders' ids, locks and ownership, exit-status files, and the path rules for
sbatch and container binds. Imports only core/.
"""
