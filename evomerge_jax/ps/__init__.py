"""Parameter-space search: the genome (`genome.py`), the population pass that merges each layer
for every candidate inside the layer scan (`population.py`), the search assembled from a config
(`search.py`) and the export of a genome as an HF dir plus its mergekit recipe (`export.py`)."""
