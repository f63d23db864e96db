"""maskcls: mask, gender and age-band classification from face photos."""
__version__ = "0.1.0"
