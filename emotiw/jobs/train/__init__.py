"""The train job: each modality head, then the fusion variants, with Ray Train's
`TorchTrainer`, tracked in MLflow and registered as a packaged model.

- `config`: the job's typed config and the fusion variants it trains;
- `data`: the feature tables -> train / validation arrays (frozen front-ends run once);
- `worker`: what one Ray Train worker runs (DDP over the arrays, checkpoint by val loss);
- `driver`: `TorchTrainer` runs (the heads in one, each fold's heads in one, the fusion
  variants over one training set in one), MLflow, packaging.
"""

from emotiw.jobs.train.config import TrainConfig, TrainResult
from emotiw.jobs.train.driver import run_train

__all__ = ["TrainConfig", "TrainResult", "run_train"]
