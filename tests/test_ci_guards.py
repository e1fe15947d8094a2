"""What keeps CI honest about itself: no test may hang it."""

from __future__ import annotations


def test_every_test_has_a_time_limit_so_a_stuck_job_fails_ci(request):
    # pytest-timeout's default (pyproject.toml); slow tests raise theirs with a marker
    assert float(request.config.getini("timeout") or 0) > 0
