"""Dataset sources that are part of the package: the embedded shapes dataset, image folders."""
