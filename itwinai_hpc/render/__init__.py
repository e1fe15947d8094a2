"""A Workflow -> planned steps -> a run folder rendered through the Jinja templates. Never submits
anything.
"""
