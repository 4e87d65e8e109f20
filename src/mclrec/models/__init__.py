"""Models of mclrec: the SASRec encoder, augmentations, augmenters, losses and RecBole interop."""

from mclrec.models.augment import crop, mask, reorder, two_views
from mclrec.models.augmenters import build_augmenter
from mclrec.models.encoder import SASRecEncoder
from mclrec.models.losses import bpr_loss, cl2_loss, info_nce, rec_ce_loss, reg_loss, sample_negatives
from mclrec.models.recbole import encoder_from_recbole, load_recbole_checkpoint, to_recbole_state_dict

__all__ = [
    "SASRecEncoder", "build_augmenter", "crop", "mask", "reorder", "two_views", "info_nce", "cl2_loss", "reg_loss",
    "rec_ce_loss", "bpr_loss", "sample_negatives", "load_recbole_checkpoint", "encoder_from_recbole",
    "to_recbole_state_dict",
]
