"""Fixbot: turns a production error into a reviewed, tested pull request, steered from Slack."""
