"""One module per CLI command (validate, render, submit, status/logs, cancel/resume, scaling,
profiles, report): functions of the parsed arguments that tests can call too. cli.py only parses
and imports the one module the command needs, so `validate` never pays for `submit`.
"""
