"""The scripted model the tests script: the product's own (`bot.local.scripted_model`),
re-exported under its public names."""

from bot.local import scripted_model

__all__ = scripted_model.__all__
globals().update({name: getattr(scripted_model, name) for name in __all__})
