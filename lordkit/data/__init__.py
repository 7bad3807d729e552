"""Datasets: the on-disk store, readers of each dataset's official files, splits and contact sheets."""
