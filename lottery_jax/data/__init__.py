"""Input pipelines: TFDS on Grain, image folders, embedded small data sets.

    from lottery_jax import data
    d = data.build(config.data, mesh=mesh, seed=config.seed)
    it = d.train_iter()            # infinite; it.get_state() / it.set_state(s)
    batch = next(it)               # {"image": f32 [B, *d.info.input_shape], "label": i32 [B]}
    for batch in d.eval_iter():    # one exact pass, plus "valid" (bool [B])
      ...

Batches are global `jax.Array`s sharded on the mesh's "data" axis; each process
reads only its own shard of the data.
"""

from lottery_jax.data.pipeline import (
    COMMON_DEFAULTS, Data, DatasetInfo, StackedTrainIterator, TrainIterator, build,
    default_config, names)
from lottery_jax.data.registry import Split, register

__all__ = [
    "COMMON_DEFAULTS", "Data", "DatasetInfo", "Split", "StackedTrainIterator",
    "TrainIterator", "build",
    "default_config", "names", "register",
]
