"""Self-supervised pretraining in two stages (``brainsegfounder pretrain``): BrainSegFounder's
pretext tasks, masked autoencoding and Volume Fusion.

tasks          the pretext tasks a run may learn, their networks and losses per step
head           the SSL head on SwinUNETR's Swin encoder (laid out like BrainSegFounder's release)
pretext        rotation, contrastive coding (NT-Xent) and masked-volume inpainting
masking        block masks and the loss on hidden voxels only (both MAEs)
swin_mae       the mask token in the Swin patch embedding and its light decoder (VIS-MAE in 3D)
volume_fusion  two subjects' crops fused box by box; the class map to segment (MIS-FM)
start_weights  the backbone a run trains and the weights it starts from (stage 2: inflated)
subjects       unlabelled cohorts: datalists, BIDS, UK Biobank-style, BraTS and plain folders
data           streaming crops with worker processes; unreadable subjects skipped and listed
recipe         the pretraining recipe keys and checks
loop           the training loop: DDP, AMP, checkpointing, resume, best by the task's validation loss
"""
