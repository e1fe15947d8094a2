"""A workflow file -> a typed, checked Workflow: schema, ${var} substitution, matrix expansion, the
step graph, site profiles, scaling studies. Imports only core/.
"""
