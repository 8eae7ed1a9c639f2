"""Hapax's own behaviour, written as ordinary plugins on the public hooks.

Each module has a ``Plugin`` class; the gateway registers one instance of each.
"""
