"""The micro zoo recipe the zoo and VLM-demo tests build: the quick recipe at a 2-layer, 32-wide
shape with short schedules, so a whole zoo builds in seconds."""

import dataclasses

from evomerge_jax.zoo import build, train

MICRO = dataclasses.replace(
    build.make_recipe(seed=3, quick=True),
    shape=train.ModelShape(hidden=32, layers=2, heads=2, mlp=64, max_len=64),
    pretrain_docs=512, pretrain=train.Schedule(30, 3e-3, 32, warmup=5), ft_items=128,
    finetunes=(build.FineTune("l2_chat", ("l2_general",), 20, 3e-3),
               build.FineTune("math_a", ("l1_math",), 20, 3e-3)),
    reference=build.FineTune("both", ("l1_math", "l2_general"), 20, 3e-3), probe_weights=(1.0,))
