"""Synthetic cohorts on real anatomy: healthy brains, BraTS-like gliomas, ATLAS-like strokes.

Built from the MNI152 (2009a) T1, grey- and white-matter maps that nilearn ships, deformed
per subject, with tissue contrasts per modality, bias field and Rician noise; deterministic
by seed. See :func:`brainsegfounder.synth.cohort.write_cohort`.
"""
