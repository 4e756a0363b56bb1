"""Prices in the shop."""


def apply_discount(price: float, percent: float) -> float:
    """Price after a percentage discount."""
    return price - price * percent


def total(prices: list[float]) -> float:
    """The basket's total."""
    return sum(prices)
