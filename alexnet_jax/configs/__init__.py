"""Configs are Python files returning an ``ml_collections.ConfigDict`` from ``get_config()``.

``imagenet.py`` holds every number of the paper's recipe, named as the paper names it; the
others start from it and change only what they say.
"""
