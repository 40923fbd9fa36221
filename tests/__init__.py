"""The test suite: tests/{modeling,training,evaluation}/ by package, cross-cutting checks at the top level.

Fixtures live in ``conftest.py`` files (pytest finds them); plain functions and stand-ins shared by several test
modules live in ``tests.helpers``. No test module imports another.
"""
