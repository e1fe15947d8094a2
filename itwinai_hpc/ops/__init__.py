"""Run-level verbs on top of a backend: submit, wait, resume, cancel, the status view, logs and the
usage report.
"""
