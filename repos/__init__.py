"""Repositories and what Fixbot runs in them: mirrors and worktrees, the sandbox, the
one process helper, repository environments and red → green verification.

The lowest of Fixbot's packages: it imports nothing from `agents`, `bot`, `handlers` or
`app`, so the agents and the bot can both stand on it.
"""
