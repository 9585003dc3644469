"""Self-supervised pretraining: BrainSegFounder's two stages (``brainsegfounder pretrain``).

head      the SSL head on SwinUNETR's Swin encoder (laid out like BrainSegFounder's release)
pretext   rotation, contrastive coding (NT-Xent) and masked-volume inpainting
subjects  unlabelled cohorts: datalists, BIDS, UK Biobank-style, BraTS and plain folders
data      streaming crops with worker processes; unreadable subjects skipped and listed
recipe    the pretraining recipe keys and checks
loop      the training loop: DDP, AMP, checkpointing, resume, best by reconstruction loss
"""
