"""Fine-tuning and evaluation (``brainsegfounder finetune`` and ``evaluate``).

recipe      the fine-tuning recipe keys and checks
datasets    labelled cases: MONAI datalists, BraTS 2021 / 2023 and ATLAS folders, saved cases
splits      folds, held-out validation, label fraction, replay
initialise  the task's network and its first weights (scratch, SSL encoder or full model)
pipeline    MONAI transforms and data sets over the engine's reader
trainer     the training loop: validation Dice, best model, resume
metrics     Dice, HD95, volumes and lesion-wise metrics per case
evaluate    scoring label maps or a model against ground truth
"""
