"""How a run uses devices and hosts: the (pop, model) device mesh and tensor-parallel weight
sharding (`mesh.py`), multi-process start-up and supervision (`distributed.py`), the byte model of
a pass and its chunk rule (`memory_model.py`), the counter-based PRNG streams (`prng.py`) and the
XLA compiler options of the merge programs (`xla_options.py`)."""
