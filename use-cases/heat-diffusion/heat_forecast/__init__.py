"""The heat-diffusion use case's own code: the simulator standing in for a reanalysis download
(simulate), how its fields become training pairs (pairs), and the forecast network (model).
Importable by the workflow's steps through `env: {PYTHONPATH: ${workflow_dir}}`."""
