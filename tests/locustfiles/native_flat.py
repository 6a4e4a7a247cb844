"""native.py's users and listeners without its shapes: users and spawn rate come from the command line."""

from native import Admin, Fast, Reader  # noqa: F401  (the User classes; importing native registers its listeners)
