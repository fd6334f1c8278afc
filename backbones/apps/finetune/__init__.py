"""Fine-tuning on torch.distributed: ``backbones.finetune`` and ``python -m backbones finetune``.

One file a job: ``config`` (the options), ``model_setup`` (build, head, freezing), ``optim``
(optimizer and schedule), ``loop`` (an epoch, an evaluation), ``checkpoint`` (save, resume),
``output`` (the saved folder, metrics, curves) and ``run`` (the whole run).
"""

from backbones.apps.finetune.config import FinetuneConfig
from backbones.apps.finetune.run import FinetuneResult, finetune, run_finetune

__all__ = ["FinetuneConfig", "FinetuneResult", "finetune", "run_finetune"]
