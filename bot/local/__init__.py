"""The local workspace: a Slack-like workspace Fixbot can serve itself (`fixbot local`)."""
