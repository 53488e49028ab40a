"""MOSMOS pre-training: report-supervised image-text and tag-recognition training of nnU-Net encoders."""
