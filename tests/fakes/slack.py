"""The local Slack the tests talk to: the product's own (`bot.local.slack`), re-exported."""

from bot.local.slack import Ack, LocalSlack, SlackError, UploadedFile, Violation

__all__ = ["Ack", "LocalSlack", "SlackError", "UploadedFile", "Violation"]
