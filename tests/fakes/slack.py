"""The local Slack the tests talk to: the product's own (`bot.local.slack`), re-exported
under its public names."""

from bot.local import slack

__all__ = slack.__all__
globals().update({name: getattr(slack, name) for name in __all__})
