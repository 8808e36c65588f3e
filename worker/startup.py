"""What every worker-side process (training worker, validator, inference service) sets first.

Every model Dorado uses is local: base models are built from installed packages or uploaded
GGUF files, adapters come from the object store. So these processes have no reason to reach
a model hub, yet the libraries try: PEFT's ``save_pretrained`` looks the adapter's
``base_model_name_or_path`` up on the Hugging Face Hub when it is not a local folder (a
request per saved adapter, and "Unable to fetch remote file" in the log on a machine without
internet access). The offline switches make any such attempt fail at once, without a
connection. huggingface_hub reads its switch when it is first imported, so call
:func:`prepare_worker_process` before anything imports transformers or peft.
"""

from __future__ import annotations

import os
import sys
import warnings
from typing import Any

# huggingface_hub (and transformers through it) for models, datasets for data sets.
OFFLINE_ENV = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}


def stay_off_model_hubs() -> None:
    """Switch the Hugging Face libraries to offline mode in this process and its children."""
    os.environ.update(OFFLINE_ENV)
    constants: Any = sys.modules.get("huggingface_hub.constants")
    if constants is not None:
        # Imported before this call (a test runner, an embedding application): the module
        # already read the environment, and its functions check this attribute.
        constants.HF_HUB_OFFLINE = True


def ignore_peft_deprecation_noise() -> None:
    """Silence one warning that PEFT's own code triggers on every adapter it wraps.

    PEFT 0.21's ``PeftModel.__init__`` reads transformers' deprecated
    ``is_gradient_checkpointing`` alias (``is_activation_checkpointing`` in transformers 5);
    nothing in Dorado calls it, and the FutureWarning says nothing an operator can act on.
    Only that message is filtered.
    """
    warnings.filterwarnings(
        "ignore",
        message=r"`is_gradient_checkpointing` is deprecated",
        category=FutureWarning,
    )


def prepare_worker_process() -> None:
    """Offline model hubs and no library noise: call at the start of a worker-side process."""
    stay_off_model_hubs()
    ignore_peft_deprecation_noise()
