import unittest

from shop.pricing import apply_discount, total


class PricingTest(unittest.TestCase):
    def test_no_discount(self):
        self.assertEqual(apply_discount(100.0, 0), 100.0)

    def test_total(self):
        self.assertEqual(total([1.0, 2.5]), 3.5)
